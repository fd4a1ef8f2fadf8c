/* icmp.c: ICMP echo (RFC 792): replies to every request; a ping client for apps. */
#include <string.h>
#include "internal.h"

#define PING_ID 0x444e

static uint8_t reply[FRAME_MAX];
static cond_t ping_cond = COND_INIT;
static mutex_t ping_mutex = MUTEX_INIT;
static uint16_t ping_seen_seq;
static uint32_t ping_seen_src;
static int ping_seen;

void icmp_input(uint32_t src, const uint8_t *p, size_t len)
{
    if (len < 8 || ip_checksum(p, len, 0) != 0) {
        net_stats.rx_bad++;
        return;
    }
    if (p[0] == 8 && p[1] == 0) { /* echo request */
        memcpy(reply, p, len);
        reply[0] = 0;
        put16(reply + 2, 0);
        put16(reply + 2, ip_checksum(reply, len, 0));
        if (ip_output(src, 1, reply, len) == NET_OK)
            net_stats.icmp_echo_replies++;
    } else if (p[0] == 0 && get16(p + 4) == PING_ID) {
        ping_seen = 1;
        ping_seen_seq = get16(p + 6);
        ping_seen_src = src;
        cond_broadcast(&ping_cond);
    }
}

int net_ping(uint32_t dst, uint16_t seq, uint64_t timeout_ns)
{
    uint8_t req[64];
    memset(req, 0, sizeof req);
    req[0] = 8;
    put16(req + 4, PING_ID);
    put16(req + 6, seq);
    for (size_t i = 8; i < sizeof req; i++)
        req[i] = (uint8_t)i;
    put16(req + 2, ip_checksum(req, sizeof req, 0));
    uint64_t deadline = clock_ns() + timeout_ns;
    mutex_lock(&ping_mutex);
    ping_seen = 0;
    ip_output(dst, 1, req, sizeof req);
    netif_flush();
    int r = NET_ERR_TIMEOUT;
    for (;;) {
        if (ping_seen && ping_seen_seq == seq && ping_seen_src == dst) {
            r = NET_OK;
            break;
        }
        if (cond_timedwait(&ping_cond, &ping_mutex, deadline) == ETIMEDOUT)
            break;
    }
    mutex_unlock(&ping_mutex);
    return r;
}
