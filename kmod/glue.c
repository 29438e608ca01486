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
