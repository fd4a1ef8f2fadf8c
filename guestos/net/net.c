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

int net_busy(void)
{
    return tcp_busy() || arp_busy();
}

static void net_thread(void *arg)
{
    (void)arg;
    for (;;) {
        while (netif_poll() > 0)
            netif_flush();
        netif_flush();
        uint64_t now = now_ns();
        uint64_t next = arp_timers(now), t = tcp_timers(now);
        if (t && (!next || t < next))
            next = t;
        netif_flush();
        irq_wait(DENALI_IRQ_NET_RX, next);
    }
}

int net_start(void)
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
    net_addr = net_parse_ip(v);
    if (!net_addr || prefix < 1 || prefix > 32)
        return NET_ERR_CONFIG;
    net_mask = prefix == 32 ? 0xffffffffu : ~(0xffffffffu >> prefix);
    if (cmdline_get("gw", v, sizeof v) >= 0)
        net_gw = net_parse_ip(v);
    int r = netif_open();
    if (r != NET_OK)
        return r;
    arp_announce();
    if (!thread_create(net_thread, 0, 0))
        return NET_ERR_NOBUFS;
    return NET_OK;
}
