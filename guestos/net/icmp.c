/* icmp.c: ICMP (RFC 792): echo replies (of any size up to NET_IP_MAX: a reassembled
 * request is answered with a fragmented reply), none to requests sent to a broadcast
 * address (RFC 1122 3.2.2.6 allows either; answering invites smurf amplification);
 * error messages for the other protocols; a ping client for apps. */
#include <stdlib.h>
#include <string.h>
#include "internal.h"

#define ICMP_ERRORS_PER_S 100

#define PING_ID 0x444e

static uint8_t reply[FRAME_MAX];
static cond_t ping_cond = COND_INIT;
static mutex_t ping_mutex = MUTEX_INIT;
static uint16_t ping_seen_seq;
static uint32_t ping_seen_src;
static int ping_seen;

void icmp_error(uint8_t type, uint8_t code, const uint8_t *ip, size_t len)
{
    static uint64_t window;
    static unsigned sent;
    size_t hlen = (size_t)(ip[0] & 15) * 4;
    uint32_t src = get32(ip + 12), dst = get32(ip + 16);
    if (len < hlen || (get16(ip + 6) & 0x1fff) || dst != net_addr || !src || src == 0xffffffffu ||
        (src & 0xf0000000u) == 0xe0000000u)
        return; /* a non-first fragment, to a broadcast, from nowhere or a group: say nothing */
    if (ip[9] == 1 && len >= hlen + 1 && ip[hlen] != 0 && ip[hlen] != 8)
        return; /* never an error about an ICMP error */
    uint64_t now = now_ns();
    if (now - window > 1000000000ull) {
        window = now;
        sent = 0;
    }
    if (++sent > ICMP_ERRORS_PER_S)
        return;
    /* RFC 1812 4.3.2.3: as much of the datagram as fits in 576 bytes */
    size_t quote = len < 576 - 20 - 8 ? len : 576 - 20 - 8;
    uint8_t msg[576];
    memset(msg, 0, 8);
    msg[0] = type;
    msg[1] = code;
    memcpy(msg + 8, ip, quote);
    put16(msg + 2, ip_checksum(msg, 8 + quote, 0));
    if (ip_output(src, 1, msg, 8 + quote) == NET_OK)
        net_stats.icmp_errors_sent++;
    netif_flush();
}

void icmp_input(uint32_t src, int to_us, const uint8_t *p, size_t len)
{
    if (len < 8 || ip_checksum(p, len, 0) != 0) {
        net_stats.rx_bad++;
        return;
    }
    if (p[0] == 8 && p[1] == 0) { /* echo request */
        if (!to_us) {
            net_stats.icmp_broadcast_ignored++;
            return;
        }
        uint8_t *out = len <= sizeof reply ? reply : malloc(len);
        if (!out)
            return;
        memcpy(out, p, len);
        out[0] = 0;
        put16(out + 2, 0);
        put16(out + 2, ip_checksum(out, len, 0));
        if (ip_output(src, 1, out, len) == NET_OK)
            net_stats.icmp_echo_replies++;
        if (out != reply)
            free(out);
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
