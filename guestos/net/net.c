/* net.c: configuration from the command line and the network thread. */
#include <stdlib.h>
#include <string.h>
#include "internal.h"

struct net_stats net_stats;

uint32_t net_parse_ip(const char *s)
{
    uint32_t ip = 0;
    for (int i = 0; i < 4; i++) {
        char *end;
        unsigned long v = strtoul(s, &end, 10);
        if (end == s || v > 255 || (i < 3 && *end != '.'))
            return 0;
        ip = ip << 8 | (uint32_t)v;
        s = end + (i < 3);
    }
    return ip;
}

uint32_t net_ip(void)
{
    return net_addr;
}

const struct net_stats *net_get_stats(void)
{
    return &net_stats;
}

static void net_reidentify(void);

static thread_t *net_thread_t;
static uint64_t net_waiting_until; /* the deadline the network thread waits on; 0 = none */
static int net_waiting;

void net_timer_changed(uint64_t deadline)
{
    /* an earlier deadline than the one the network thread sleeps on: wake it to re-wait */
    if (net_waiting && (!net_waiting_until || deadline < net_waiting_until)) {
        net_waiting = 0;
        thread_wake(net_thread_t);
    }
}

static uint64_t earliest(uint64_t a, uint64_t b)
{
    return a && (!b || a < b) ? a : b;
}

int net_busy(void)
{
    return tcp_busy() || arp_busy();
}

static void net_thread(void *arg)
{
    (void)arg;
    for (;;) {
        while (netif_poll() > 0) {
            tcp_flush_acks();
            netif_flush();
        }
        tcp_flush_acks();
        netif_flush();
        uint64_t now = now_ns();
        uint64_t next = earliest(earliest(arp_timers(now), tcp_timers(now)), ip_timers(now));
        tcp_flush_acks();
        netif_flush();
        net_waiting_until = next;
        net_waiting = 1;
        uint32_t woke = irq_wait(DENALI_IRQ_NET_RX | DENALI_IRQ_CLONE, next);
        net_waiting = 0;
        if (woke & DENALI_IRQ_CLONE)
            net_reidentify();
    }
}

/* ip=A.B.C.D[/N] and gw= from the command line into net_addr, net_mask, net_gw. */
static int net_read_address(void)
{
    char v[40];
    if (cmdline_get("ip", v, sizeof v) < 0)
        return NET_ERR_CONFIG;
    char *slash = strchr(v, '/');
    int prefix = 24;
    if (slash) {
        *slash = 0;
        prefix = atoi(slash + 1);
    }
    uint32_t addr = net_parse_ip(v);
    if (!addr || prefix < 1 || prefix > 32)
        return NET_ERR_CONFIG;
    net_addr = addr;
    net_mask = prefix == 32 ? 0xffffffffu : ~(0xffffffffu >> prefix);
    if (cmdline_get("gw", v, sizeof v) >= 0)
        net_gw = net_parse_ip(v);
    if (cmdline_get("ipfrag_ms", v, sizeof v) >= 0 && atoi(v) > 0)
        net_reasm_timeout_ns = (uint64_t)atoi(v) * 1000000ull;
    return NET_OK;
}

/* This VM was restored as a clone of a snapshot (DENALI_IRQ_CLONE): its MAC and command
 * line are new. Take the address from the command line again (a clone given none keeps
 * the old one), the MAC from the NIC, re-key TCP (a new ISN secret and ephemeral port
 * start, not the ones every sibling shares) and announce them with a gratuitous ARP. */
static void net_reidentify(void)
{
    net_read_address();
    netif_open();
    tcp_rekey();
    arp_announce();
}

int net_start(void)
{
    if (net_read_address() != NET_OK)
        return NET_ERR_CONFIG;
    int r = netif_open();
    if (r != NET_OK)
        return r;
    arp_announce();
    tcp_init();
    net_thread_t = thread_create(net_thread, 0, 0);
    if (!net_thread_t)
        return NET_ERR_NOBUFS;
    return NET_OK;
}
