/* test-nestnet: a NIC passed down to child VMs (CHILD_F_NIC), or not.
 * With "-- REST" on its command line, a parent: it reads the child image from the disk
 * image=NAME (default "img"), creates a child with REST as its command line, mem=BYTES
 * of memory (default 2 MiB), quota=BYTES of its own (default 0), the disks of this VM
 * whose bit is set in disks=MASK (default all) passed down read-only (rw=1: as they are
 * here) and, with nic=1, a NIC of its own (CHILD_F_NIC); starts it,
 * prints "nestnet: vm=V child mac=M" (M all zero: no NIC), and exits with the child's
 * exit status (125 when it did not exit). A refused create prints
 * "nestnet: vm=V child_create code=R" and exits 100 + R.
 * Without "--", a leaf: it asks for its NIC (NET_INFO) and sends one broadcast frame of
 * EtherType 0x88b5 carrying "nestnet vm=V" (NET_SEND), prints
 * "nestnet: leaf vm=V info=R send=R sent=N mac=M"; then for each of its disks it
 * rewrites block 0 with what it holds and prints "nestnet: leaf vm=V disk NAME ro=F
 * write=R", and "nestnet: leaf vm=V disks=N"; exits 0. */
#include <denali/child.h>
#include <fs/disk.h>
#include <ilwaco.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void mac_text(const uint8_t *m, char *out)
{
    snprintf(out, 18, "%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5]);
}

static int leaf(void)
{
    unsigned vm = (unsigned)DENALI_VREGS->vm_id;
    struct denali_hc_net_info info;
    memset(&info, 0, sizeof info);
    int ri = denali_hc_net_info(&info);
    static uint8_t frame[64];
    memset(frame, 0xff, 6);
    memcpy(frame + 6, info.mac, 6);
    frame[12] = 0x88;
    frame[13] = 0xb5;
    snprintf((char *)frame + 14, sizeof frame - 14, "nestnet vm=%u", vm);
    struct denali_iovec iov = {(uint32_t)frame, 60};
    struct denali_hc_net_send s = {0};
    s.frames = (uint32_t)&iov;
    s.count = 1;
    int rs = denali_hc_net_send(&s);
    char m[18];
    mac_text(info.mac, m);
    printf("nestnet: leaf vm=%u info=%d send=%d sent=%u mac=%s\n", vm, ri, rs, (unsigned)s.sent, m);
    uint32_t n = 0;
    disk_t d;
    static uint8_t block[DENALI_DISK_BLOCK_SIZE];
    while (disk_open_index(n, &d) == DENALI_OK) {
        int rw = disk_read(&d, 0, 1, block);
        if (rw == DENALI_OK)
            rw = disk_write(&d, 0, 1, block); /* the same bytes: refused only when read-only */
        printf("nestnet: leaf vm=%u disk %s ro=%d write=%d\n", vm, d.name, disk_readonly(&d), rw);
        n++;
    }
    printf("nestnet: leaf vm=%u disks=%u\n", vm, (unsigned)n);
    return 0;
}

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    const char *rest = strstr(DENALI_CMDLINE, "-- ");
    if (!rest)
        return leaf();
    unsigned vm = (unsigned)DENALI_VREGS->vm_id;
    char name[32] = "img", v[24];
    child_cmdline_get("image", name, sizeof name);
    uint32_t mem = child_cmdline_get("mem", v, sizeof v) > 0 ? (uint32_t)strtoul(v, 0, 0) : 2u << 20;
    uint32_t quota = child_cmdline_get("quota", v, sizeof v) > 0 ? (uint32_t)strtoul(v, 0, 0) : 0;
    uint32_t flags = child_cmdline_get("rw", v, sizeof v) > 0 && v[0] == '1' ? 0 : DENALI_CHILD_F_DISK_RO;
    uint32_t mask = child_cmdline_get("disks", v, sizeof v) > 0 ? (uint32_t)strtoul(v, 0, 0) : 0xffffffffu;
    if (child_cmdline_get("nic", v, sizeof v) > 0 && v[0] == '1')
        flags |= DENALI_CHILD_F_NIC;
    void *image;
    uint32_t len, h, disks = 0;
    int r = child_load_disk(name, &image, &len);
    if (r != DENALI_OK) {
        printf("nestnet: vm=%u cannot read disk %s (code %d)\n", vm, name, r);
        return 124;
    }
    for (uint32_t i = 0; i < 32; i++) { /* every disk of this VM, by handle */
        struct denali_hc_disk_info di = {0};
        di.index = i;
        if (denali_hc_disk_info(&di) != DENALI_OK)
            break;
        disks |= 1u << di.handle;
    }
    uint8_t mac[6] = {1, 1, 1, 1, 1, 1};
    r = child_create_nic(image, len, mem, quota, rest + 3, disks & mask, flags, &h, mac);
    if (r != DENALI_OK) {
        printf("nestnet: vm=%u child_create code=%d\n", vm, r);
        return 100 + r;
    }
    char m[18];
    mac_text(mac, m);
    if ((r = child_start(h)) != DENALI_OK) {
        printf("nestnet: vm=%u child_start code=%d\n", vm, r);
        return 100 + r;
    }
    printf("nestnet: vm=%u child mac=%s\n", vm, m);
    for (;;) {
        child_event_t ev;
        child_next_event(&ev);
        if (ev.kind == DENALI_CHILD_EV_EXIT) {
            printf("nestnet: vm=%u child ended end=%u status=%u\n", vm, (unsigned)ev.nr, (unsigned)ev.status);
            return ev.nr == DENALI_CHILD_END_EXITED ? (int)ev.status : 125;
        }
    }
}
