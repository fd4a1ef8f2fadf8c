/* disk.c: the block driver for denali's virtual disks (see fs/disk.h).
 *
 * Waiting: one thread at a time (the "poller") sleeps in irq_wait(DENALI_IRQ_DISK);
 * the others sleep on a condition variable. Each DISK interrupt wakes the poller,
 * which wakes everyone; each thread then looks at its own status word (written by
 * the kernel between slices, hence volatile). The poller's sleep has a deadline so a
 * wake-up can never be lost for good. */
#include <fs/disk.h>
#include <ilwaco.h>
#include <string.h>

#define POLL_NS 50000000ull /* 50 ms: the longest a lost wake-up could delay a waiter */

static mutex_t wait_lock = MUTEX_INIT;
static cond_t wait_cond = COND_INIT;
static int polling;

/* Sleep until some disk request may have completed. Called with wait_lock held. */
static void wait_for_completion(void)
{
    if (polling) {
        cond_wait(&wait_cond, &wait_lock);
        return;
    }
    polling = 1;
    mutex_unlock(&wait_lock);
    irq_wait(DENALI_IRQ_DISK, now_ns() + POLL_NS);
    mutex_lock(&wait_lock);
    polling = 0;
    cond_broadcast(&wait_cond);
}

int disk_wait(volatile uint32_t *status)
{
    if (*status != DENALI_DISK_PENDING)
        return (int)*status;
    mutex_lock(&wait_lock);
    while (*status == DENALI_DISK_PENDING)
        wait_for_completion();
    mutex_unlock(&wait_lock);
    return (int)*status;
}

/* Wait for any completion on any disk (used after FULL). */
static void wait_any(void)
{
    mutex_lock(&wait_lock);
    wait_for_completion();
    mutex_unlock(&wait_lock);
}

static void fill(disk_t *d, const struct denali_hc_disk_info *info)
{
    d->handle = info->handle;
    d->flags = info->flags;
    d->blocks = info->blocks;
    d->max_blocks = info->max_blocks ? info->max_blocks : 1;
    d->queue = info->queue;
    memcpy(d->name, info->name, sizeof d->name);
    d->name[sizeof d->name - 1] = '\0';
}

int disk_open(const char *name, disk_t *d)
{
    struct denali_hc_disk_info info;
    size_t n = strlen(name);
    if (n == 0 || n > DENALI_DISK_NAME_MAX)
        return DENALI_INVAL;
    memset(&info, 0, sizeof info);
    memcpy(info.name, name, n);
    int r = denali_hc_disk_info(&info);
    if (r == DENALI_OK)
        fill(d, &info);
    return r;
}

int disk_open_index(uint32_t index, disk_t *d)
{
    struct denali_hc_disk_info info;
    memset(&info, 0, sizeof info);
    info.index = index;
    int r = denali_hc_disk_info(&info);
    if (r == DENALI_OK)
        fill(d, &info);
    return r;
}

int disk_submit_read(const disk_t *d, struct denali_hc_disk_read *req, uint64_t block,
                     uint32_t count, void *buf)
{
    req->handle = d->handle;
    req->count = count;
    req->block = block;
    req->buf = (uint32_t)(uintptr_t)buf;
    req->status = DENALI_DISK_PENDING;
    return denali_hc_disk_read(req);
}

int disk_submit_write(const disk_t *d, struct denali_hc_disk_write *req, uint64_t block,
                      uint32_t count, const void *buf)
{
    req->handle = d->handle;
    req->count = count;
    req->block = block;
    req->buf = (uint32_t)(uintptr_t)buf;
    req->status = DENALI_DISK_PENDING;
    return denali_hc_disk_write(req);
}

int disk_submit_flush(const disk_t *d, struct denali_hc_disk_flush *req)
{
    req->handle = d->handle;
    req->status = DENALI_DISK_PENDING;
    return denali_hc_disk_flush(req);
}

/* One request of at most max_blocks, retried while the disk's queue is full. */
static int one_request(const disk_t *d, int write, uint64_t block, uint32_t count, void *buf)
{
    for (;;) {
        int r;
        if (write) {
            struct denali_hc_disk_write req;
            r = disk_submit_write(d, &req, block, count, buf);
            if (r == DENALI_OK)
                return disk_wait(&req.status);
        } else {
            struct denali_hc_disk_read req;
            r = disk_submit_read(d, &req, block, count, buf);
            if (r == DENALI_OK)
                return disk_wait(&req.status);
        }
        if (r != DENALI_FULL)
            return r;
        wait_any();
    }
}

static int transfer(const disk_t *d, int write, uint64_t block, uint32_t count, void *buf)
{
    if (count == 0)
        return DENALI_INVAL;
    uint8_t *p = buf;
    while (count) {
        uint32_t n = count < d->max_blocks ? count : d->max_blocks;
        int r = one_request(d, write, block, n, p);
        if (r != DENALI_OK)
            return r;
        block += n;
        count -= n;
        p += (size_t)n * DENALI_DISK_BLOCK_SIZE;
    }
    return DENALI_OK;
}

int disk_read(const disk_t *d, uint64_t block, uint32_t count, void *buf)
{
    return transfer(d, 0, block, count, buf);
}

int disk_write(const disk_t *d, uint64_t block, uint32_t count, const void *buf)
{
    return transfer(d, 1, block, count, (void *)(uintptr_t)buf);
}

int disk_flush(const disk_t *d)
{
    for (;;) {
        struct denali_hc_disk_flush req;
        int r = disk_submit_flush(d, &req);
        if (r == DENALI_OK)
            return disk_wait(&req.status);
        if (r != DENALI_FULL)
            return r;
        wait_any();
    }
}
