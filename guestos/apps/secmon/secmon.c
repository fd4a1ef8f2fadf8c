/* secmon: a security monitor. Runs an untrusted child from the disk "child" (image=NAME
 * picks another disk) with this VM's disks passed down and denies every disk write it
 * makes: DISK_WRITE is answered INVAL (in EAX and in the request's status word) without
 * reaching the kernel (FAULT when the child's structure is not memory it may write); everything else goes straight to the kernel. cmdline=... is the
 * child's command line (the rest of this VM's command line after "--"), mem=BYTES its
 * memory (4 MiB), quota=BYTES what it may grant its own children (0). Prints "secmon: denied N disk writes; child exited S" and exits with
 * the child's status (125 when it did not exit). */
#include <denali/child.h>
#include <fs/disk.h>
#include <ilwaco.h>
#include <stddef.h>
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
    uint32_t quota = child_cmdline_get("quota", v, sizeof v) > 0 ? (uint32_t)strtoul(v, 0, 0) : 0;
    const char *cmd = child_cmdline();
    void *image;
    uint32_t len, h, ndisks = 0;
    int r = child_load_disk(name, &image, &len);
    if (r != DENALI_OK) {
        printf("secmon: cannot read the child image from disk %s (code %d)\n", name, r);
        return 125;
    }
    for (disk_t d; disk_open_index(ndisks, &d) == DENALI_OK;)
        ndisks++;
    r = child_create(image, len, mem, quota, cmd, (1u << ndisks) - 1, 0, &h);
    if (r != DENALI_OK) {
        printf("secmon: child_create: code %d\n", r);
        return 125;
    }
    free(image);
    child_interpose(h, 1ull << DENALI_HC_DISK_WRITE, 0);
    child_start(h);
    unsigned denied = 0;
    for (;;) {
        child_event_t ev;
        child_next_event(&ev);
        if (ev.kind == DENALI_CHILD_EV_HYPERCALL) {
            uint32_t code = DENALI_INVAL;
            denied++;
            r = child_reply_write(h, ev.seq, DENALI_CHILD_ANSWER, DENALI_INVAL,
                                  ev.arg + offsetof(struct denali_hc_disk_write, status), &code, 4);
            if (r != DENALI_OK) /* a structure the child cannot write: FAULT, as the kernel says */
                child_reply(h, ev.seq, DENALI_CHILD_ANSWER, DENALI_FAULT);
        } else if (ev.kind == DENALI_CHILD_EV_EXIT) {
            printf("secmon: denied %u disk writes; child %s %u\n", denied,
                   ev.nr == DENALI_CHILD_END_EXITED ? "exited" : "ended", (unsigned)
                   (ev.nr == DENALI_CHILD_END_EXITED ? ev.status : ev.nr));
            return ev.nr == DENALI_CHILD_END_EXITED ? (int)ev.status : 125;
        }
    }
}
