// SPDX-License-Identifier: GPL-2.0
/*
 * C glue for what the kernel offers Rust no way to express: a string
 * module parameter, static inlines (poll_wait(), wq_has_sleeper(), and on
 * 6.12 iov_iter_count() and signal_pending()), the ring's memory and its
 * fault handler, and the credential walks. Everything else is Rust;
 * compat/ declares these. KCHAT_KAPI7 (Kbuild, with the Rust cfg
 * kchat_kapi7) leaves out what 7.x's Rust abstractions do instead.
 */
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/poll.h>
#include <linux/uio.h>
#include <linux/vmalloc.h>
#include <linux/mm.h>
#include <linux/pid_namespace.h>
#include <linux/cred.h>
#include <linux/uaccess.h>
#include <linux/sched/signal.h>
#include <linux/capability.h>
#include <linux/user_namespace.h>

/*
 * Values compat/ copies from macros that are __force casts, which bindgen
 * cannot evaluate (compat/file.rs: FMODE_*, compat/iov.rs: IOCB_NOWAIT).
 * A kernel that changes one fails this build instead of running with a
 * wrong flag.
 */
static_assert((__force unsigned int)FMODE_READ == 1u << 0);
static_assert((__force unsigned int)FMODE_WRITE == 1u << 1);
static_assert((__force unsigned int)FMODE_PREAD == 1u << 3);
static_assert((__force unsigned int)FMODE_PWRITE == 1u << 4);
static_assert((__force unsigned int)FMODE_CAN_ODIRECT == 1u << 22);
static_assert((__force unsigned int)FMODE_NOWAIT == 1u << 27);
static_assert(IOCB_NOWAIT == 0x8);

const char *kchat_default_room(void);
void kchat_poll_wait(struct file *filp, wait_queue_head_t *queue, poll_table *table);

static char default_room[32] = "lobby";
module_param_string(default_room, default_room, sizeof(default_room), 0444);

/* Here, not in module!: its author key changed name between 6.12 and 7.x. */
MODULE_AUTHOR("kchat developers");
MODULE_PARM_DESC(default_room,
		 "Room created at load, world read/write (default: lobby; empty: none)");

const char *kchat_default_room(void)
{
	return default_room;
}

void kchat_poll_wait(struct file *filp, wait_queue_head_t *queue, poll_table *table)
{
	poll_wait(filp, queue, table);
}

#ifndef KCHAT_KAPI7
/* 7.x's IovIterSource and IovIterDest read the count themselves. */
size_t kchat_iov_iter_count(const struct iov_iter *iter);

size_t kchat_iov_iter_count(const struct iov_iter *iter)
{
	return iov_iter_count(iter);
}
#endif

bool kchat_wq_has_sleeper(struct wait_queue_head *queue);

bool kchat_wq_has_sleeper(struct wait_queue_head *queue)
{
	return wq_has_sleeper(queue);
}

/*
 * A room's ring: zeroed (nothing of the kernel's old memory may ever be
 * read out of it, by read() or a mapping), charged to the memory cgroup of
 * whoever creates the room, and refused quietly when there is no such
 * memory (the size is the creator's choice: ENOMEM is an answer, not a
 * warning). Not vmalloc_user(), which can do neither: a mapping inserts
 * its pages one by one instead of asking for VM_USERMAP.
 */
void *kchat_ring_alloc(unsigned long size);
void kchat_ring_free(void *area);

void *kchat_ring_alloc(unsigned long size)
{
	return __vmalloc(size, GFP_KERNEL_ACCOUNT | __GFP_ZERO | __GFP_NOWARN);
}

void kchat_ring_free(void *area)
{
	vfree(area);
}

/*
 * What compat/ring_area.rs's RingArea is (#[repr(C)]): a vmalloc area of
 * one control page and `len` bytes of records. A mapping points at it
 * (vm_private_data): the mapping holds the file, which holds the room,
 * which holds it.
 */
struct kchat_ring_area {
	void *ptr;
	size_t len;
};

/*
 * A page of the ring zapped from a mapping (madvise(MADV_DONTNEED), or
 * anything else that drops the page tables) comes back on the next touch,
 * as the same page: a reader never gets SIGBUS for reading its own
 * mapping.
 */
static vm_fault_t kchat_ring_fault(struct vm_fault *vmf)
{
	const struct kchat_ring_area *area = vmf->vma->vm_private_data;
	struct page *page;

	/* Page offsets are the area's (mappings start at 0); a split mapping
	 * keeps them, so the bound is the area's, not this vma's. */
	if (vmf->pgoff >= (PAGE_SIZE + area->len) >> PAGE_SHIFT)
		return VM_FAULT_SIGBUS;
	page = vmalloc_to_page((char *)area->ptr + (vmf->pgoff << PAGE_SHIFT));
	if (!page)
		return VM_FAULT_SIGBUS;
	get_page(page);
	vmf->page = page;
	return 0;
}

static const struct vm_operations_struct kchat_ring_vm_ops = {
	.fault = kchat_ring_fault,
};

/*
 * Points a mapping of a room's ring at the ring and at the fault handler
 * above. No line's Rust API sets vm_ops: 7.x's Rust (compat/ring_area.rs,
 * through VmaNew) does the rest of what kchat_map_ring does on 6.12.
 */
void kchat_ring_vm_setup(struct vm_area_struct *vma, const struct kchat_ring_area *area);

void kchat_ring_vm_setup(struct vm_area_struct *vma, const struct kchat_ring_area *area)
{
	vma->vm_private_data = (void *)area;
	vma->vm_ops = &kchat_ring_vm_ops;
}

#ifndef KCHAT_KAPI7
/*
 * Maps a room's ring (its control page and records) into a reader,
 * read-only for good: a reader can neither corrupt the ring nor forge a
 * header. The pages are inserted one by one (the ring is not VM_USERMAP,
 * see kchat_ring_alloc); each holds its own reference.
 */
int kchat_map_ring(struct vm_area_struct *vma, const struct kchat_ring_area *area);

int kchat_map_ring(struct vm_area_struct *vma, const struct kchat_ring_area *area)
{
	unsigned long size = vma->vm_end - vma->vm_start, off;
	int err;

	/* From the start, at most all of it: the control page alone says how
	 * large the rest is. */
	if (vma->vm_pgoff != 0 || size > PAGE_SIZE + area->len)
		return -EINVAL;
	/* Records are data: never writable, never executable, now or later
	 * (mprotect cannot add what the VM_MAY* bits lack). */
	if (vma->vm_flags & (VM_WRITE | VM_EXEC))
		return -EPERM;
	vm_flags_mod(vma, VM_DONTEXPAND | VM_DONTDUMP, VM_MAYWRITE | VM_MAYEXEC);
	kchat_ring_vm_setup(vma, area);
	for (off = 0; off < size; off += PAGE_SIZE) {
		err = vm_insert_page(vma, vma->vm_start + off,
				     vmalloc_to_page((char *)area->ptr + off));
		if (err)
			return err;
	}
	return 0;
}
#endif

/*
 * Whether the current task's pid namespace and the file's user namespace
 * are the initial ones: the only ones in which the ids a mapped ring shows
 * (as the initial namespaces see them) mean what they say.
 */
bool kchat_in_initial_namespaces(struct file *file);

bool kchat_in_initial_namespaces(struct file *file)
{
	return task_active_pid_ns(current) == &init_pid_ns &&
	       file->f_cred->user_ns == &init_user_ns;
}

__poll_t kchat_poll_requested(const poll_table *table);

__poll_t kchat_poll_requested(const poll_table *table)
{
	return poll_requested_events(table);
}

/*
 * Copies a writer's bytes with page faults disabled: a copy that would
 * fault stops short instead of sleeping, so a writer never waits for its
 * own page (a stalled FUSE file, an unserved userfaultfd) while holding
 * what other writers wait for. The caller faults the rest in without its
 * locks and tries again, as generic_perform_write() does.
 */
size_t kchat_copy_from_iter_nofault(void *to, size_t len, struct iov_iter *from);

size_t kchat_copy_from_iter_nofault(void *to, size_t len, struct iov_iter *from)
{
	size_t copied;

	pagefault_disable();
	copied = copy_from_iter(to, len, from);
	pagefault_enable();
	return copied;
}

/* get_pid is a static inline: one stamp serves every message of a batch. */
struct pid *kchat_get_pid(struct pid *pid);

struct pid *kchat_get_pid(struct pid *pid)
{
	return get_pid(pid);
}

bool kchat_fatal_signal_pending(void);

bool kchat_fatal_signal_pending(void)
{
	return fatal_signal_pending(current);
}

#ifndef KCHAT_KAPI7
/* 7.x's Task::signal_pending says it. */
bool kchat_signal_pending(void);

bool kchat_signal_pending(void)
{
	return signal_pending(current);
}
#endif

/*
 * The user a file's opener is charged as for per-user limits: inside user
 * namespaces, the owner of the outermost one that an unprivileged user
 * made (the real user whose subordinate ids, from newuidmap, they are);
 * else, when every namespace up the chain was made by root (a rootful
 * container runtime gives each container its own id range), the file's
 * effective kernel uid. One user's ids are that user; root's containers
 * stay apart. The file's credentials hold their namespace, and each
 * namespace its parent, so the walk needs no lock.
 */
uid_t kchat_file_charged_uid(const struct file *file);

uid_t kchat_file_charged_uid(const struct file *file)
{
	const struct cred *cred = file->f_cred;
	const struct user_namespace *ns;
	kuid_t charged = cred->euid;

	for (ns = cred->user_ns; ns != &init_user_ns; ns = ns->parent)
		if (!uid_eq(ns->owner, GLOBAL_ROOT_UID))
			charged = ns->owner;
	return __kuid_val(charged);
}

/*
 * Whether the file was opened with CAP_SYS_ADMIN: what a file may do is
 * its opener's to say, not whoever later holds it (a privileged program
 * handed an fd must not lend it its privilege).
 */
bool kchat_file_capable_sys_admin(const struct file *file);

bool kchat_file_capable_sys_admin(const struct file *file)
{
	return file_ns_capable(file, &init_user_ns, CAP_SYS_ADMIN);
}
