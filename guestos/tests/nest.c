/* test-nest: recursive VMs. depth=N: with N > 0, read this very image from the disk
 * "img", create a child running it with depth=N-1 (the disk passed down read-only),
 * interpose on its CONSOLE_WRITE calls (counted, passed) and wait for its end. A leaf
 * (depth=0) exits 1; every other level exits its child's status + 1, so a tree of depth
 * N ends with N + 1. Each level also checks what its child's memory holds (the vregs
 * magic and vm_id, read with CHILD_MEMORY) and that the hostile calls it can make are
 * refused (an unknown handle, a quota beyond its grant, a child address outside the
 * child, a buffer outside itself). mem=BYTES (default 2 MiB) per child, quota=BYTES
 * the whole grant it gives its child (mem for the child, the rest for its subtree).
 * Before starting its child, each level appends " loaded=0xa500000N" (N: its depth) to the
 * child's command line with CHILD_MEMORY, and each child prints "nest: depth=M loaded=...".
 * sleep=1: the leaf sleeps for ever (to destroy a tree); fault=1: the leaf writes to page 0;
 * its parent, told of the fault, lets it stand and exits 50 (the levels above, 51, 52...). Prints "nest: depth=N ... ok" or "nest: FAIL ...". */
#include <denali/child.h>
#include <ilwaco.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(int depth, const char *what, int code)
{
    printf("nest: FAIL depth=%d %s (code %d)\n", depth, what, code);
    return 100;
}

static uint32_t num(const char *key, uint32_t dflt)
{
    char v[24];
    return cmdline_get(key, v, sizeof v) > 0 ? (uint32_t)strtoul(v, 0, 0) : dflt;
}

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    int depth = (int)num("depth", 0);
    uint32_t mem = num("mem", 2u << 20), quota = num("quota", 0);
    char v[8];
    int sleep = cmdline_get("sleep", v, sizeof v) > 0, crash = cmdline_get("fault", v, sizeof v) > 0;
    char loaded[16];
    if (cmdline_get("loaded", loaded, sizeof loaded) > 0) /* written by the parent before our start */
        printf("nest: depth=%d loaded=%s\n", depth, loaded);
    if (depth <= 0) {
        printf("nest: depth=0 leaf vm=%u ok\n", (unsigned)DENALI_VREGS->vm_id);
        if (sleep)
            for (;;)
                thread_sleep_ns(3600000000000ull);
        if (crash)
            *(volatile uint32_t *)num("fault", 4) = 1; /* page 0: the leaf faults */
        return 1;
    }
    void *image;
    uint32_t len, h;
    int r = child_load_disk("img", &image, &len);
    if (r != DENALI_OK)
        return fail(depth, "child_load_disk", r);
    /* hostile: more than the grant, an unknown handle */
    r = child_create(image, len, mem, 0x7ffff000u, "", 0, 0, &h);
    if (r != DENALI_FULL)
        return fail(depth, "create beyond the quota", r);
    if ((r = child_start(7)) != DENALI_NODEV)
        return fail(depth, "start of an unknown handle", r);
    char cmd[96];
    uint32_t sub = quota > mem ? quota - mem : 0;
    snprintf(cmd, sizeof cmd, "depth=%d mem=%u quota=%u%s%s", depth - 1, (unsigned)mem, (unsigned)sub,
             sleep ? " sleep=1" : "", crash ? " fault=4" : "");
    r = child_create(image, len, mem, sub, cmd, 1, DENALI_CHILD_F_DISK_RO, &h);
    if (r != DENALI_OK)
        return fail(depth, "child_create", r);
    /* load data into the child before it starts: a word appended to its command line */
    char tok[24];
    int tl = snprintf(tok, sizeof tok, " loaded=0x%x", 0xa5000000u + (unsigned)depth);
    r = child_write(h, DENALI_ADDR_VREGS + DENALI_CMDLINE_OFFSET + (uint32_t)strlen(cmd), tok, (uint32_t)tl + 1);
    if (r != DENALI_OK)
        return fail(depth, "child_write before the start", r);
    r = child_interpose(h, 1ull << DENALI_HC_CONSOLE_WRITE, DENALI_CHILD_I_FAULT);
    if (r != DENALI_OK)
        return fail(depth, "child_interpose", r);
    if ((r = child_start(h)) != DENALI_OK)
        return fail(depth, "child_start", r);
    int writes = 0, checked = 0;
    for (;;) {
        child_event_t ev;
        child_next_event(&ev);
        if (ev.handle != h)
            return fail(depth, "event of another handle", (int)ev.handle);
        if (ev.kind == DENALI_CHILD_EV_HYPERCALL) {
            writes++;
            if (!checked) { /* the child is waiting: its memory holds still */
                uint32_t vr[4];
                r = child_read(h, DENALI_ADDR_VREGS, vr, sizeof vr);
                if (r != DENALI_OK || vr[0] != 0x494C4E44u)
                    return fail(depth, "child vregs", r);
                if ((r = child_read(h, 0xC0000000u, vr, 4)) != DENALI_FAULT)
                    return fail(depth, "read of child kernel space", r);
                if ((r = child_read(h, 0, vr, 4)) != DENALI_FAULT)
                    return fail(depth, "read of child page 0", r);
                if ((r = child_read(h, DENALI_ADDR_VREGS, (void *)0xC0000000u, 4)) != DENALI_FAULT)
                    return fail(depth, "read into our kernel space", r);
                if ((r = child_write(h, DENALI_ADDR_KERNEL_PAGE, vr, 4)) != DENALI_FAULT)
                    return fail(depth, "write of child kernel page", r);
                checked = 1;
            }
            child_reply(h, ev.seq, DENALI_CHILD_PASS, 0);
        } else if (ev.kind == DENALI_CHILD_EV_FAULT) { /* reported; let it stand */
            printf("nest: depth=%d child fault eip=0x%x address=0x%x vector=%u\n", depth,
                   (unsigned)ev.eip, (unsigned)ev.address, (unsigned)ev.vector);
            child_reply(h, ev.seq, DENALI_CHILD_PASS, 0);
        } else if (ev.kind == DENALI_CHILD_EV_EXIT) {
            if (ev.nr == DENALI_CHILD_END_FAULTED) {
                printf("nest: depth=%d child faulted at eip=0x%x\n", depth, (unsigned)ev.eip);
                return 50;
            }
            if (ev.nr != DENALI_CHILD_END_EXITED)
                return fail(depth, "child end", (int)ev.nr);
            printf("nest: depth=%d child vm ended status=%u console_writes=%d ok\n", depth,
                   (unsigned)ev.status, writes);
            return (int)ev.status + 1;
        }
    }
}
