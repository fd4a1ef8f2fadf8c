/* fs/disk.h: the block driver for denali's virtual disks (guestos/fs/disk.c).
 *
 * A VM's disks are fixed arrays of 4 KiB blocks that the host chose at spawn; the
 * guest finds them by name. Every request is asynchronous in the ABI (see "Disks" in
 * docs/virtual-architecture.md): the kernel accepts it, later writes its final code
 * into the request's status word and raises DENALI_IRQ_DISK. This driver offers both:
 *
 *  - blocking calls (disk_read, disk_write, disk_flush) that block only the calling
 *    thread; other threads run while the host does the I/O. Any count is accepted
 *    and split into requests of at most max_blocks. When the disk's queue is full
 *    they wait for a completion and retry.
 *  - asynchronous calls (disk_submit_*) that return as soon as the kernel accepted the
 *    request; disk_wait() then blocks until its status is final. The request struct
 *    and the buffer MUST stay untouched (and allocated) until then.
 *
 * Results are DENALI_OK or a DENALI_* code: NODEV (no such disk), INVAL (count,
 * range, read-only disk), FAULT (a buffer outside guest memory), FULL (asynchronous
 * calls only), IO (the host failed). */
#ifndef GUESTOS_FS_DISK_H
#define GUESTOS_FS_DISK_H
#include <stddef.h>
#include <stdint.h>
#include <denali/abi.h>

/* The disk device constants (DENALI_DISK_*) come from the generated abi.h. */

typedef struct disk {
    uint32_t handle;      /* for the hypercalls */
    uint32_t flags;       /* DENALI_DISK_F_READONLY */
    uint64_t blocks;      /* size in blocks of DENALI_DISK_BLOCK_SIZE bytes */
    uint32_t max_blocks;  /* most blocks per request */
    uint32_t queue;       /* requests the disk holds before FULL */
    char name[DENALI_DISK_NAME_MAX + 1];
} disk_t;

/* Fills *d for the disk called name: DENALI_OK, NODEV, or INVAL (name too long). */
int disk_open(const char *name, disk_t *d);
/* Fills *d for the index-th disk (0 = first): DENALI_OK, or NODEV past the last. */
int disk_open_index(uint32_t index, disk_t *d);
static inline int disk_readonly(const disk_t *d) { return (d->flags & DENALI_DISK_F_READONLY) != 0; }

/* Blocking for the calling thread only. count may be any number (0 is INVAL). */
int disk_read(const disk_t *d, uint64_t block, uint32_t count, void *buf);
int disk_write(const disk_t *d, uint64_t block, uint32_t count, const void *buf);
/* Returns once every write submitted to d before it is durable on the host. */
int disk_flush(const disk_t *d);

/* Asynchronous: DENALI_OK when accepted (then disk_wait(&req->status)), else the
 * refusal, which is also in req->status. count is at most d->max_blocks. */
int disk_submit_read(const disk_t *d, struct denali_hc_disk_read *req, uint64_t block,
                     uint32_t count, void *buf);
int disk_submit_write(const disk_t *d, struct denali_hc_disk_write *req, uint64_t block,
                      uint32_t count, const void *buf);
int disk_submit_flush(const disk_t *d, struct denali_hc_disk_flush *req);
/* Blocks the calling thread until *status is final; returns it. */
int disk_wait(volatile uint32_t *status);
static inline int disk_done(const volatile uint32_t *status) { return *status != DENALI_DISK_PENDING; }

#endif
