/* dbgmon: a debugging monitor. Runs a child from the disk "child" (image=NAME picks
 * another disk; mem=BYTES, 4 MiB; the child's command line follows "--") and traces
 * every hypercall it makes onto the console, "dbgmon: #N nr=NR ebx=ADDR a0=.. a1=..",
 * the first two words of its argument structure, then lets the kernel handle it; its
 * faults are traced too. At the end: "dbgmon: child exited S after N hypercalls" and one
 * "dbgmon: nr=NR count=C" line per number used; exits with the child's status. quiet=1: no
 * line per hypercall; mask=HEX: interpose only on the hypercalls whose bit is set (bit n:
 * number n; default every one; mask=0 leaves every hypercall to the kernel). */
#include <denali/child.h>
#include <fs/disk.h>
#include <ilwaco.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    char name[32] = "child", v[24];
    child_cmdline_get("image", name, sizeof name);
    uint32_t mem = child_cmdline_get("mem", v, sizeof v) > 0 ? (uint32_t)strtoul(v, 0, 0) : 4u << 20;
    int quiet = child_cmdline_get("quiet", v, sizeof v) > 0;
    uint64_t mask = child_cmdline_get("mask", v, sizeof v) > 0 ? (uint64_t)strtoul(v, 0, 16) : ~0ull;
    const char *cmd = child_cmdline();
    void *image;
    uint32_t len, h, ndisks = 0;
    int r = child_load_disk(name, &image, &len);
    if (r != DENALI_OK) {
        printf("dbgmon: cannot read the child image from disk %s (code %d)\n", name, r);
        return 125;
    }
    for (disk_t d; disk_open_index(ndisks, &d) == DENALI_OK;)
        ndisks++;
    r = child_create(image, len, mem, 0, cmd, (1u << ndisks) - 1, 0, &h);
    if (r != DENALI_OK) {
        printf("dbgmon: child_create: code %d\n", r);
        return 125;
    }
    free(image);
    child_interpose(h, mask, DENALI_CHILD_I_FAULT);
    child_start(h);
    unsigned total = 0, counts[64] = {0};
    for (;;) {
        child_event_t ev;
        child_next_event(&ev);
        if (ev.kind == DENALI_CHILD_EV_HYPERCALL) {
            uint32_t a[2];
            memcpy(a, ev.args, sizeof a);
            total++;
            counts[ev.nr & 63]++;
            if (!quiet)
                printf("dbgmon: #%u nr=%u ebx=0x%x a0=0x%x a1=0x%x\n", total, (unsigned)ev.nr,
                       (unsigned)ev.arg, (unsigned)a[0], (unsigned)a[1]);
            child_reply(h, ev.seq, DENALI_CHILD_PASS, 0);
        } else if (ev.kind == DENALI_CHILD_EV_FAULT) {
            printf("dbgmon: fault eip=0x%x address=0x%x vector=%u\n", (unsigned)ev.eip,
                   (unsigned)ev.address, (unsigned)ev.vector);
            child_reply(h, ev.seq, DENALI_CHILD_PASS, 0);
        } else if (ev.kind == DENALI_CHILD_EV_EXIT) {
            printf("dbgmon: child %s %u after %u hypercalls\n",
                   ev.nr == DENALI_CHILD_END_EXITED ? "exited" : "ended",
                   (unsigned)(ev.nr == DENALI_CHILD_END_EXITED ? ev.status : ev.nr), total);
            for (int i = 0; i < 64; i++)
                if (counts[i])
                    printf("dbgmon: nr=%d count=%u\n", i, counts[i]);
            return ev.nr == DENALI_CHILD_END_EXITED ? (int)ev.status : 125;
        }
    }
}
