// SPDX-License-Identifier: GPL-2.0
/*
 * C glue for what Linux 6.12 offers Rust no way to express: a module
 * parameter (Rust `module!` parameters came later), and the static inlines
 * poll_wait(), wq_has_sleeper() and iov_iter_count(). Everything else is Rust; compat/
 * declares these.
 */
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/poll.h>
#include <linux/uio.h>
#include <linux/vmalloc.h>
#include <linux/mm.h>
#include <linux/pid_namespace.h>
#include <linux/cred.h>

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

size_t kchat_iov_iter_count(const struct iov_iter *iter);

size_t kchat_iov_iter_count(const struct iov_iter *iter)
{
	return iov_iter_count(iter);
}

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
 * Maps a room's ring (its control page and records) into a reader,
 * read-only for good: a reader can neither corrupt the ring nor forge a
 * header. The pages are inserted one by one (the ring is not VM_USERMAP,
 * see kchat_ring_alloc); each holds its own reference, and the mapping
 * holds the file, which holds the room.
 */
int kchat_map_ring(struct vm_area_struct *vma, void *area, unsigned long len);

int kchat_map_ring(struct vm_area_struct *vma, void *area, unsigned long len)
{
	unsigned long size = vma->vm_end - vma->vm_start, off;
	int err;

	/* From the start, at most all of it: the control page alone says how
	 * large the rest is. */
	if (vma->vm_pgoff != 0 || size > len)
		return -EINVAL;
	if (vma->vm_flags & VM_WRITE)
		return -EPERM;
	vm_flags_mod(vma, VM_DONTEXPAND | VM_DONTDUMP, VM_MAYWRITE);
	for (off = 0; off < size; off += PAGE_SIZE) {
		err = vm_insert_page(vma, vma->vm_start + off,
				     vmalloc_to_page((char *)area + off));
		if (err)
			return err;
	}
	return 0;
}

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
