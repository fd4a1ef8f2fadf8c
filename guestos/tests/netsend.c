/* test-netsend: NET_SEND at its edges, each result printed, for comparing the kernel's
 * paths (the CPU's native send and the Python one must answer alike).
 *
 * cmdline: burst=B (default 40) first makes B one-frame NET_SENDs in a row in its first
 * slice and prints their results as one line of codes; then, after a 50 ms idle (the
 * switch has drained), one NET_SEND per case below, printing "case NAME r=R sent=S".
 * loop=N instead sends N frames, one per NET_SEND, idling 1 ms after every 10 (the queue the tests give it holds 16), and
 * prints "looped N". Every frame is broadcast from this NIC's MAC with a 4-byte
 * sequence number at offset 14 (counted over all frames the guest tried to send),
 * so the host can check which arrived and in what order. Exits 0. */
#include <ilwaco.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PAGE 4096u

static uint8_t frames[16][1520];
static struct denali_iovec iov[70];
static uint32_t seq;

/* A broadcast frame of `len` bytes at `p`, numbered with the next sequence number. */
static void make(uint8_t *p, uint32_t len)
{
    memset(p, 0xff, 6);
    memcpy(p + 6, (const void *)&DENALI_VREGS->mac[0], 6);
    p[12] = 0x88;
    p[13] = 0xb5; /* local experimental ethertype */
    memcpy(p + 14, &seq, 4);
    for (uint32_t i = 18; i < len; i++)
        p[i] = (uint8_t)(i * 7 + seq);
    seq++;
}

static int send_at(struct denali_hc_net_send *ns, uint32_t at, uint32_t count, uint32_t *sent)
{
    ns->frames = at;
    ns->count = count;
    ns->sent = 0xdeadbeef;
    int r = denali_hc_net_send(ns);
    *sent = ns->sent;
    return r;
}

static void pause_ms(uint64_t ms)
{
    struct denali_hc_clock c;
    denali_hc_clock(&c);
    struct denali_hc_idle id = {c.now_ns + ms * 1000000ull, 0, 0, 0};
    denali_hc_idle(&id);
}

static void one(const char *name, struct denali_hc_net_send *ns, uint32_t at, uint32_t count)
{
    uint32_t sent = 0;
    int r = send_at(ns, at, count, &sent);
    printf("case %s r=%d sent=%u\n", name, r, sent);
}

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    char v[24];
    struct denali_hc_net_send ns;
    uint32_t sent;
    if (cmdline_get("loop", v, sizeof v) >= 0) {
        unsigned long n = strtoul(v, 0, 10);
        for (unsigned long i = 0; i < n; i++) {
            make(frames[0], 60 + (uint32_t)(i % 1400));
            iov[0] = (struct denali_iovec){(uint32_t)frames[0], 60 + (uint32_t)(i % 1400)};
            send_at(&ns, (uint32_t)iov, 1, &sent);
            if (i % 10 == 9)
                pause_ms(1);
        }
        printf("looped %lu\n", n);
        return 0;
    }
    unsigned burst = cmdline_get("burst", v, sizeof v) >= 0 ? (unsigned)strtoul(v, 0, 10) : 40;
    char codes[256];
    unsigned k = 0;
    for (unsigned i = 0; i < burst && k + 1 < sizeof codes; i++) {
        make(frames[i % 16], 64);
        iov[0] = (struct denali_iovec){(uint32_t)frames[i % 16], 64};
        int r = send_at(&ns, (uint32_t)iov, 1, &sent);
        codes[k++] = (char)('A' + (r < 0 ? -r : r)) ;
        codes[k++] = (char)('0' + (sent > 9 ? 9 : sent));
    }
    codes[k] = 0;
    printf("burst %s\n", codes);
    pause_ms(50);

    uint32_t heap_end = DENALI_VREGS->heap_end, mem_size = DENALI_VREGS->mem_size;
    uint8_t *edge = (uint8_t *)(heap_end - 100); /* 100 bytes before the stack guard page */

    make(frames[0], 60);
    iov[0] = (struct denali_iovec){(uint32_t)frames[0], 60};
    one("one", &ns, (uint32_t)iov, 1);

    static const uint32_t lens[8] = {60, 61, 100, 777, 1024, 1513, 1514, 300};
    for (int i = 0; i < 8; i++) {
        make(frames[i], lens[i]);
        iov[i] = (struct denali_iovec){(uint32_t)frames[i], lens[i]};
    }
    one("batch", &ns, (uint32_t)iov, 8);

    make(frames[0], 60);
    iov[0] = (struct denali_iovec){(uint32_t)frames[0], 60};
    iov[1] = (struct denali_iovec){(uint32_t)frames[1], 59};
    one("short-second", &ns, (uint32_t)iov, 2);
    iov[0] = (struct denali_iovec){(uint32_t)frames[0], 1515};
    one("long", &ns, (uint32_t)iov, 1);
    iov[0] = (struct denali_iovec){0x3000, 60};
    one("unmapped-frame", &ns, (uint32_t)iov, 1);
    make(edge, 100);
    iov[0] = (struct denali_iovec){(uint32_t)edge, 100};
    one("frame-to-the-guard-edge", &ns, (uint32_t)iov, 1);
    iov[0] = (struct denali_iovec){(uint32_t)edge, 101};
    one("frame-into-the-guard", &ns, (uint32_t)iov, 1);
    iov[0] = (struct denali_iovec){mem_size - 60, 60};
    one("frame-at-the-end", &ns, (uint32_t)iov, 1);
    iov[0] = (struct denali_iovec){mem_size - 59, 60};
    one("frame-past-the-end", &ns, (uint32_t)iov, 1);
    iov[0] = (struct denali_iovec){0xfffffff0u, 60};
    one("frame-wraps", &ns, (uint32_t)iov, 1);
    iov[0] = (struct denali_iovec){DENALI_ADDR_KERNEL_PAGE, 64};
    one("frame-from-the-kernel-page", &ns, (uint32_t)iov, 1);
    iov[0] = (struct denali_iovec){(uint32_t)main & ~(PAGE - 1), 64};
    one("frame-from-code", &ns, (uint32_t)iov, 1);
    iov[0] = (struct denali_iovec){DENALI_ADDR_VREGS, 64};
    one("frame-from-the-register-page", &ns, (uint32_t)iov, 1);
    make(frames[0], 60);
    iov[0] = (struct denali_iovec){(uint32_t)frames[0], 60};
    one("descriptors-unmapped", &ns, 0x3000, 1);
    one("descriptors-into-the-guard", &ns, heap_end - 4, 1);
    one("count-0", &ns, (uint32_t)iov, 0);
    one("count-65", &ns, (uint32_t)iov, 65);
    for (int i = 0; i < 64; i++)
        iov[i] = (struct denali_iovec){(uint32_t)frames[i % 16], 60};
    one("count-64", &ns, (uint32_t)iov, 64);

    /* the structure itself: over the register page's kernel fields, read-only, split */
    struct denali_hc_net_send *at_vregs = (struct denali_hc_net_send *)DENALI_ADDR_VREGS;
    int r = denali_hc_net_send(at_vregs);
    printf("case struct-on-the-kernel-fields r=%d\n", r);
    r = denali_hc_net_send((struct denali_hc_net_send *)(DENALI_ADDR_KERNEL_PAGE + 64));
    printf("case struct-read-only r=%d\n", r);
    struct denali_hc_net_send *split = (struct denali_hc_net_send *)(heap_end - 8);
    r = denali_hc_net_send(split);
    printf("case struct-into-the-guard r=%d\n", r);
    struct denali_hc_net_send *in_cmdline = (struct denali_hc_net_send *)(DENALI_ADDR_VREGS + 0xF00);
    make(frames[0], 60);
    iov[0] = (struct denali_iovec){(uint32_t)frames[0], 60};
    in_cmdline->frames = (uint32_t)iov;
    in_cmdline->count = 1;
    r = denali_hc_net_send(in_cmdline);
    printf("case struct-in-the-guests-part-of-the-page r=%d sent=%u\n", r, in_cmdline->sent);
    printf("netsend: %u frames made\n", seq);
    return 0;
}
