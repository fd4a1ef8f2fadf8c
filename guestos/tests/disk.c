/* test-disk: exercises the virtual disks from inside a guest; prints SUCCESS or FAIL: ...
 *
 * Command line (key=value, space separated):
 *   ops=a,b,...  what to do, in order (default: write,verify,flush):
 *     write     write the pattern (seed) to blocks [start, start+count) of disk, then
 *               read it back and compare
 *     verify    read those blocks and compare with the pattern
 *     zeros     read those blocks and check they are all zero
 *     flush     flush disk
 *     async     submit reads of those blocks one block per request, as many at once
 *               as the queue holds, then wait for them all and compare with the pattern
 *     threads   threads=N threads at once, thread i writes and verifies count blocks
 *               from start + i*count (more requests than the queue holds: FULL retries)
 *     file      mount the DNLFS disk fs=NAME, read path=PATH in odd-sized pieces and
 *               print "file PATH size N crc32 XXXXXXXX" (checked against crc=X if given
 *               and against the directory's CRC-32)
 *     ls        print "ls PATH SIZE CRC" for every file of fs=NAME
 *     list      print "disk INDEX NAME BLOCKS FLAGS" for every disk
 *     hostile   hostile block numbers, counts and buffers on disk: each must be refused
 *               with the right code and change nothing
 *     readonly  writes to disk ro=NAME must be refused with INVAL
 *     absent    DISK_INFO for absent=NAME must give NODEV
 *     watch     print "watching", then read block start every ms until a read fails;
 *               print "io-error CODE" (the host cuts the disk file meanwhile)
 *   disk=NAME (default data)  seed=N (1)  start=B (0)  count=N (8) */
#include <fs/disk.h>
#include <fs/fs.h>
#include <ilwaco.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK DENALI_DISK_BLOCK_SIZE

static char disk_name[32] = "data";
static uint32_t seed = 1, start, count = 8;
static int failed;

static void fail(const char *what, int code)
{
    printf("FAIL: %s (code %d)\n", what, code);
    failed = 1;
}

static uint32_t word(uint32_t block, uint32_t i)
{
    uint32_t x = seed * 0x9E3779B1u ^ block * 0x85EBCA77u ^ i * 0xC2B2AE3Du;
    return x ^ (x >> 15);
}

static void fill_pattern(uint32_t block, uint32_t *p)
{
    for (uint32_t i = 0; i < BLOCK / 4; i++)
        p[i] = word(block, i);
}

static int check_pattern(uint32_t block, const uint32_t *p)
{
    for (uint32_t i = 0; i < BLOCK / 4; i++)
        if (p[i] != word(block, i))
            return 0;
    return 1;
}

static uint32_t arg_u32(const char *key, uint32_t dflt)
{
    char v[24];
    return cmdline_get(key, v, sizeof v) > 0 ? (uint32_t)strtoul(v, NULL, 0) : dflt;
}

static int open_disk(disk_t *d)
{
    int r = disk_open(disk_name, d);
    if (r != DENALI_OK)
        fail("disk_open", r);
    return r == DENALI_OK;
}

static void op_write(void)
{
    disk_t d;
    if (!open_disk(&d))
        return;
    uint32_t *buf = malloc((size_t)count * BLOCK);
    if (!buf) {
        fail("malloc", 0);
        return;
    }
    for (uint32_t b = 0; b < count; b++)
        fill_pattern(start + b, buf + b * (BLOCK / 4));
    int r = disk_write(&d, start, count, buf);
    if (r != DENALI_OK)
        fail("disk_write", r);
    memset(buf, 0, (size_t)count * BLOCK);
    r = disk_read(&d, start, count, buf);
    if (r != DENALI_OK)
        fail("disk_read after write", r);
    for (uint32_t b = 0; r == DENALI_OK && b < count; b++)
        if (!check_pattern(start + b, buf + b * (BLOCK / 4))) {
            fail("read back differs from what was written", (int)(start + b));
            break;
        }
    free(buf);
    if (!failed)
        printf("wrote %u blocks at %u\n", count, start);
}

static void op_verify(int zeros)
{
    disk_t d;
    if (!open_disk(&d))
        return;
    uint32_t *buf = malloc(BLOCK);
    if (!buf) {
        fail("malloc", 0);
        return;
    }
    for (uint32_t b = 0; b < count; b++) {
        int r = disk_read(&d, start + b, 1, buf);
        if (r != DENALI_OK) {
            fail("disk_read", r);
            break;
        }
        int ok = 1;
        if (zeros) {
            for (uint32_t i = 0; i < BLOCK / 4; i++)
                ok &= buf[i] == 0;
        } else {
            ok = check_pattern(start + b, buf);
        }
        if (!ok) {
            fail(zeros ? "block is not zero" : "block does not hold the pattern", (int)(start + b));
            break;
        }
    }
    free(buf);
    if (!failed)
        printf("%s %u blocks at %u\n", zeros ? "zeros" : "verified", count, start);
}

static void op_flush(void)
{
    disk_t d;
    if (!open_disk(&d))
        return;
    int r = disk_flush(&d);
    if (r != DENALI_OK)
        fail("disk_flush", r);
    else
        printf("flushed\n");
}

static void op_async(void)
{
    disk_t d;
    if (!open_disk(&d))
        return;
    uint32_t n = count < d.queue ? count : d.queue;
    struct denali_hc_disk_read *reqs = calloc(n, sizeof *reqs);
    uint32_t *buf = malloc((size_t)n * BLOCK);
    if (!reqs || !buf) {
        fail("malloc", 0);
        return;
    }
    for (uint32_t i = 0; i < n; i++) {
        int r = disk_submit_read(&d, &reqs[i], start + i, 1, buf + i * (BLOCK / 4));
        if (r != DENALI_OK) {
            fail("disk_submit_read", r);
            n = i;
            break;
        }
    }
    /* one more than the queue holds must be refused, and say so in its status, unless
     * the kernel already completed one of them (its status word says so) */
    struct denali_hc_disk_read extra;
    if (n == d.queue) {
        int r = disk_submit_read(&d, &extra, start, 1, buf);
        if (r == DENALI_OK) {
            int completed = 0;
            for (uint32_t i = 0; i < n; i++)
                completed |= reqs[i].status != DENALI_DISK_PENDING;
            if (!completed)
                fail("request beyond a full queue was accepted", r);
            if (disk_wait(&extra.status) != DENALI_OK)
                fail("the extra read", (int)extra.status);
        } else if (r != DENALI_FULL || extra.status != DENALI_FULL)
            fail("request beyond the queue was not refused with FULL", r);
    }
    for (uint32_t i = 0; i < n; i++) {
        int r = disk_wait(&reqs[i].status);
        if (r != DENALI_OK)
            fail("async read", r);
        else if (!check_pattern(start + i, buf + i * (BLOCK / 4)))
            fail("async read returned the wrong data", (int)i);
    }
    free(reqs);
    free(buf);
    printf("async %u requests\n", n);
}

struct job {
    const disk_t *d;
    uint32_t first;
    int err;
};

static void thread_job(void *arg)
{
    struct job *j = arg;
    uint32_t *buf = malloc((size_t)count * BLOCK);
    if (!buf) {
        j->err = -100;
        return;
    }
    for (uint32_t b = 0; b < count; b++)
        fill_pattern(j->first + b, buf + b * (BLOCK / 4));
    j->err = disk_write(j->d, j->first, count, buf);
    if (!j->err) {
        memset(buf, 0, (size_t)count * BLOCK);
        j->err = disk_read(j->d, j->first, count, buf);
    }
    for (uint32_t b = 0; !j->err && b < count; b++)
        if (!check_pattern(j->first + b, buf + b * (BLOCK / 4)))
            j->err = -101;
    free(buf);
}

static void op_threads(void)
{
    disk_t d;
    if (!open_disk(&d))
        return;
    uint32_t n = arg_u32("threads", 8);
    if (n == 0 || n > 64) {
        fail("threads must be 1..64", (int)n);
        return;
    }
    struct job *jobs = calloc(n, sizeof *jobs);
    thread_t **ts = calloc(n, sizeof *ts);
    if (!jobs || !ts) {
        fail("malloc", 0);
        return;
    }
    for (uint32_t i = 0; i < n; i++) {
        jobs[i].d = &d;
        jobs[i].first = start + i * count;
        ts[i] = thread_create(thread_job, &jobs[i], 0);
        if (!ts[i]) {
            fail("thread_create", (int)i);
            n = i;
            break;
        }
    }
    for (uint32_t i = 0; i < n; i++) {
        thread_join(ts[i]);
        if (jobs[i].err)
            fail("thread's write/read/verify", jobs[i].err);
    }
    free(jobs);
    free(ts);
    printf("threads %u x %u blocks\n", n, count);
}

static void op_file(void)
{
    char fsname[32], path[FS_PATH_MAX + 1], want[16];
    fs_t *fs;
    fs_file_t f;
    if (cmdline_get("fs", fsname, sizeof fsname) < 0)
        strlcpy(fsname, "root", sizeof fsname);
    if (cmdline_get("path", path, sizeof path) < 0) {
        fail("file needs path=", 0);
        return;
    }
    int r = fs_mount(fsname, &fs);
    if (r != FS_OK) {
        printf("mount: %s\n", fs_strerror(r));
        fail("fs_mount", r);
        return;
    }
    r = fs_open(fs, path, &f);
    if (r != FS_OK) {
        printf("open %s: %s\n", path, fs_strerror(r));
        fail("fs_open", r);
        fs_unmount(fs);
        return;
    }
    /* odd-sized pieces: unaligned starts, block-crossing ends, whole-block runs */
    static const size_t pieces[] = {1, 4095, 3, 8192, 5000, 12288, 77};
    uint8_t *buf = malloc(12288);
    uint32_t crc = 0;
    uint64_t off = 0;
    for (unsigned k = 0; buf; k++) {
        int64_t n = fs_read(&f, off, buf, pieces[k % 7]);
        if (n < 0) {
            fail("fs_read", (int)n);
            break;
        }
        if (n == 0)
            break;
        crc = fs_crc32(crc, buf, (size_t)n);
        off += (uint64_t)n;
    }
    free(buf);
    printf("file %s size %u crc32 %08x\n", path, (unsigned)fs_size(&f), crc);
    if (off != fs_size(&f))
        fail("read a different number of bytes than the size", (int)off);
    if (crc != f.crc32)
        fail("CRC-32 differs from the directory's", 0);
    if (cmdline_get("crc", want, sizeof want) > 0 && strtoul(want, NULL, 16) != crc)
        fail("CRC-32 differs from crc=", 0);
    if (fs_read(&f, fs_size(&f), want, 1) != 0 || fs_read(&f, ~0ull, want, 1) != 0)
        fail("read past the end returned data", 0);
    fs_unmount(fs);
}

static int print_entry(const fs_stat_t *st, void *arg)
{
    (void)arg;
    printf("ls %s %u %08x\n", st->path, (unsigned)st->size, st->crc32);
    return 0;
}

static void op_ls(void)
{
    char fsname[32];
    fs_t *fs;
    if (cmdline_get("fs", fsname, sizeof fsname) < 0)
        strlcpy(fsname, "root", sizeof fsname);
    int r = fs_mount(fsname, &fs);
    if (r != FS_OK) {
        printf("mount: %s\n", fs_strerror(r));
        fail("fs_mount", r);
        return;
    }
    printf("label '%s', %u files\n", fs_label(fs), fs_count(fs));
    fs_list(fs, print_entry, NULL);
    fs_file_t f;
    if (fs_open(fs, "no/such/file", &f) != FS_ENOENT)
        fail("missing file found", 0);
    fs_unmount(fs);
}

static void op_list(void)
{
    disk_t d;
    uint32_t i;
    for (i = 0; disk_open_index(i, &d) == DENALI_OK; i++)
        printf("disk %u %s %u %u\n", i, d.name, (unsigned)d.blocks, d.flags);
    if (i > DENALI_DISK_MAX_DISKS)
        fail("too many disks", (int)i);
}

/* Submits one raw request and checks both the return value and the status word. */
static void expect_rw(int write, uint32_t handle, uint64_t block, uint32_t n, uint32_t buf,
                      int want, const char *what)
{
    struct denali_hc_disk_read req;
    req.handle = handle;
    req.count = n;
    req.block = block;
    req.buf = buf;
    req.status = 12345;
    int r = denali_hypercall(write ? DENALI_HC_DISK_WRITE : DENALI_HC_DISK_READ, &req);
    if (r != want || (int)req.status != want) {
        printf("%s: got %d status %d, want %d\n", what, r, (int)req.status, want);
        fail(what, r);
    }
}

static void op_hostile(void)
{
    disk_t d;
    if (!open_disk(&d))
        return;
    uint8_t *buf = malloc(2 * BLOCK);
    if (!buf) {
        fail("malloc", 0);
        return;
    }
    uint32_t b = (uint32_t)(uintptr_t)buf;
    uint32_t code = (uint32_t)(uintptr_t)main; /* readable, not writable */
    uint32_t mem = DENALI_VREGS->mem_size;
    memset(buf, 0xA5, 2 * BLOCK);
    expect_rw(0, 999, 0, 1, b, DENALI_NODEV, "bad handle");
    expect_rw(0, d.handle, 0, 0, b, DENALI_INVAL, "zero count");
    expect_rw(0, d.handle, 0, d.max_blocks + 1, b, DENALI_INVAL, "count above max");
    expect_rw(0, d.handle, 0, 0xFFFFFFFFu, b, DENALI_INVAL, "huge count");
    expect_rw(0, d.handle, d.blocks, 1, b, DENALI_INVAL, "block at the end");
    expect_rw(0, d.handle, d.blocks - 1, 2, b, DENALI_INVAL, "range across the end");
    expect_rw(0, d.handle, ~0ull, 2, b, DENALI_INVAL, "block + count wraps");
    expect_rw(1, d.handle, ~0ull - 1, 1, b, DENALI_INVAL, "write far past the end");
    expect_rw(0, d.handle, 0, 1, 0, DENALI_FAULT, "NULL buffer");
    expect_rw(0, d.handle, 0, 1, 0xC0000000u, DENALI_FAULT, "kernel-space buffer");
    expect_rw(0, d.handle, 0, 1, 0xFFFFF000u, DENALI_FAULT, "buffer wrapping 4 GiB");
    expect_rw(0, d.handle, 0, 1, mem - BLOCK / 2, DENALI_FAULT, "buffer past the end of memory");
    expect_rw(0, d.handle, 0, 1, code, DENALI_FAULT, "read into code");
    expect_rw(0, d.handle, 0, 1, DENALI_ADDR_KERNEL_PAGE, DENALI_FAULT, "read into the kernel page");
    expect_rw(1, d.handle, 0, 1, 0x3000, DENALI_FAULT, "write from an unmapped page");
    for (uint32_t i = 0; i < 2 * BLOCK; i++)
        if (buf[i] != 0xA5) {
            fail("a refused request changed memory", (int)i);
            break;
        }
    /* the structure itself in bad places */
    int r = denali_hypercall(DENALI_HC_DISK_READ, (void *)0);
    if (r != DENALI_FAULT)
        fail("NULL request", r);
    r = denali_hypercall(DENALI_HC_DISK_READ, (void *)(uintptr_t)(mem - 8));
    if (r != DENALI_FAULT)
        fail("request struct across the end of memory", r);
    r = denali_hypercall(DENALI_HC_DISK_FLUSH, (void *)(uintptr_t)code);
    if (r != DENALI_FAULT)
        fail("request struct in code (status not writable)", r);
    struct denali_hc_disk_info info;
    memset(&info, 'x', sizeof info);
    if ((r = denali_hc_disk_info(&info)) != DENALI_INVAL)
        fail("unterminated disk name", r);
    struct denali_hc_disk_flush fl = {.handle = 77, .status = 0};
    if ((r = denali_hc_disk_flush(&fl)) != DENALI_NODEV || fl.status != DENALI_NODEV)
        fail("flush of a bad handle", r);
    /* and the disk still works */
    if ((r = disk_read(&d, d.blocks - 1, 1, buf)) != DENALI_OK)
        fail("read of the last block", r);
    free(buf);
    printf("hostile done\n");
}

static void op_readonly(void)
{
    char name[32];
    disk_t d;
    if (cmdline_get("ro", name, sizeof name) < 0)
        strlcpy(name, "root", sizeof name);
    int r = disk_open(name, &d);
    if (r != DENALI_OK) {
        fail("open read-only disk", r);
        return;
    }
    if (!disk_readonly(&d))
        fail("disk is not flagged read-only", 0);
    void *buf = calloc(1, BLOCK);
    if ((r = disk_write(&d, 0, 1, buf)) != DENALI_INVAL)
        fail("write to a read-only disk", r);
    if ((r = disk_read(&d, 0, 1, buf)) != DENALI_OK)
        fail("read of a read-only disk", r);
    if ((r = disk_flush(&d)) != DENALI_OK)
        fail("flush of a read-only disk", r);
    free(buf);
    printf("readonly ok\n");
}

static void op_absent(void)
{
    char name[40];
    disk_t d;
    if (cmdline_get("absent", name, sizeof name) < 0)
        strlcpy(name, "nosuchdisk", sizeof name);
    int r = disk_open(name, &d);
    if (r != DENALI_NODEV)
        fail("absent disk", r);
    if ((r = disk_open_index(DENALI_DISK_MAX_DISKS, &d)) != DENALI_NODEV)
        fail("disk index past the last", r);
    printf("absent ok\n");
}

static void op_watch(void)
{
    disk_t d;
    if (!open_disk(&d))
        return;
    void *buf = malloc(BLOCK);
    printf("watching\n");
    uint64_t give_up = now_ns() + 20000000000ull;
    for (;;) {
        int r = disk_read(&d, start, 1, buf);
        if (r != DENALI_OK) {
            printf("io-error %d\n", r);
            break;
        }
        if (now_ns() > give_up) {
            fail("the disk never failed", 0);
            break;
        }
        thread_sleep_ns(1000000);
    }
    free(buf);
}

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    char ops[200];
    cmdline_get("disk", disk_name, sizeof disk_name);
    seed = arg_u32("seed", 1);
    start = arg_u32("start", 0);
    count = arg_u32("count", 8);
    if (cmdline_get("ops", ops, sizeof ops) < 0)
        strlcpy(ops, "write,verify,flush", sizeof ops);
    for (char *op = ops; op && *op && !failed;) {
        char *comma = strchr(op, ',');
        if (comma)
            *comma = '\0';
        if (!strcmp(op, "write")) op_write();
        else if (!strcmp(op, "verify")) op_verify(0);
        else if (!strcmp(op, "zeros")) op_verify(1);
        else if (!strcmp(op, "flush")) op_flush();
        else if (!strcmp(op, "async")) op_async();
        else if (!strcmp(op, "threads")) op_threads();
        else if (!strcmp(op, "file")) op_file();
        else if (!strcmp(op, "ls")) op_ls();
        else if (!strcmp(op, "list")) op_list();
        else if (!strcmp(op, "hostile")) op_hostile();
        else if (!strcmp(op, "readonly")) op_readonly();
        else if (!strcmp(op, "absent")) op_absent();
        else if (!strcmp(op, "watch")) op_watch();
        else fail(op, -1);
        op = comma ? comma + 1 : NULL;
    }
    if (failed)
        return 1;
    printf("SUCCESS\n");
    return 0;
}
