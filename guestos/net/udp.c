/* udp.c: UDP (RFC 768): bound sockets with bounded queues of datagrams (each allocated
 * at its size), checksums, ICMP port unreachable for datagrams to unbound ports. */
#include <stdlib.h>
#include <string.h>
#include "internal.h"

struct dgram {
    uint32_t src;
    uint16_t sport;
    uint32_t len;
    uint8_t *data;
};

struct udp_sock {
    uint16_t port;
    uint8_t used;
    uint8_t head, count;
    cond_t ready;
    struct dgram q[NET_UDP_QUEUE];
};

static struct udp_sock socks[NET_UDP_SOCKETS];
static mutex_t udp_mutex = MUTEX_INIT;
static uint8_t out_small[8 + 1472];

static uint16_t udp_checksum(uint32_t src, uint32_t dst, const uint8_t *p, size_t len)
{
    uint32_t sum = (src >> 16) + (src & 0xffff) + (dst >> 16) + (dst & 0xffff) + 17 + (uint32_t)len;
    uint16_t c = ip_checksum(p, len, sum);
    return c ? c : 0xffff;
}

void udp_input(uint32_t src, uint32_t dst, const uint8_t *p, size_t len, const uint8_t *ip, size_t iplen)
{
    if (len < 8 || get16(p + 4) < 8 || get16(p + 4) > len) {
        net_stats.rx_bad++;
        return;
    }
    len = get16(p + 4);
    if (get16(p + 6) && udp_checksum(src, dst, p, len) != 0xffff) {
        /* a correct checksum sums (with the pseudo header) to 0xffff before inversion */
        uint32_t sum = (src >> 16) + (src & 0xffff) + (dst >> 16) + (dst & 0xffff) + 17 + (uint32_t)len;
        if (ip_checksum(p, len, sum) != 0) {
            net_stats.rx_bad++;
            return;
        }
    }
    uint16_t dport = get16(p + 2);
    for (int i = 0; i < NET_UDP_SOCKETS; i++) {
        struct udp_sock *s = &socks[i];
        if (!s->used || s->port != dport)
            continue;
        if (s->count == NET_UDP_QUEUE || len - 8 > NET_UDP_MAX) {
            net_stats.udp_drop++;
            return;
        }
        struct dgram *d = &s->q[(s->head + s->count) % NET_UDP_QUEUE];
        d->data = malloc(len - 8 ? len - 8 : 1);
        if (!d->data) {
            net_stats.udp_drop++;
            return;
        }
        d->src = src;
        d->sport = get16(p);
        d->len = (uint32_t)(len - 8);
        memcpy(d->data, p + 8, len - 8);
        s->count++;
        net_stats.udp_rx++;
        cond_signal(&s->ready);
        return;
    }
    net_stats.udp_no_port++;
    icmp_error(3, 3, ip, iplen); /* port unreachable (RFC 1122 4.1.3.1) */
}

int udp_bind(uint16_t port)
{
    for (int i = 0; i < NET_UDP_SOCKETS; i++) {
        if (!socks[i].used) {
            memset(&socks[i], 0, sizeof socks[i]);
            socks[i].used = 1;
            socks[i].port = port;
            return i;
        }
    }
    return NET_ERR_NOBUFS;
}

int udp_sendto(int sock, uint32_t dst, uint16_t dport, const void *buf, size_t len)
{
    if (sock < 0 || sock >= NET_UDP_SOCKETS || !socks[sock].used || len > NET_UDP_MAX)
        return NET_ERR_INVAL;
    uint8_t *out = len <= 1472 ? out_small : malloc(8 + len);
    if (!out)
        return NET_ERR_NOBUFS;
    put16(out, socks[sock].port);
    put16(out + 2, dport);
    put16(out + 4, (uint16_t)(8 + len));
    put16(out + 6, 0);
    memcpy(out + 8, buf, len);
    put16(out + 6, udp_checksum(net_addr, dst, out, 8 + len));
    int r = ip_output(dst, 17, out, 8 + len);
    netif_flush();
    if (out != out_small)
        free(out);
    return r == NET_OK ? (int)len : r;
}

int udp_recvfrom(int sock, void *buf, size_t cap, uint32_t *src, uint16_t *sport, uint64_t deadline_ns)
{
    if (sock < 0 || sock >= NET_UDP_SOCKETS || !socks[sock].used)
        return NET_ERR_INVAL;
    struct udp_sock *s = &socks[sock];
    mutex_lock(&udp_mutex);
    while (!s->count) {
        if (cond_timedwait(&s->ready, &udp_mutex, deadline_ns) == ETIMEDOUT && !s->count) {
            mutex_unlock(&udp_mutex);
            return NET_ERR_TIMEOUT;
        }
    }
    struct dgram *d = &s->q[s->head];
    size_t n = d->len < cap ? d->len : cap;
    memcpy(buf, d->data, n);
    free(d->data);
    d->data = 0;
    if (src)
        *src = d->src;
    if (sport)
        *sport = d->sport;
    s->head = (uint8_t)((s->head + 1) % NET_UDP_QUEUE);
    s->count--;
    mutex_unlock(&udp_mutex);
    return (int)n;
}

int udp_pending(int sock)
{
    if (sock < 0 || sock >= NET_UDP_SOCKETS || !socks[sock].used)
        return 0;
    return socks[sock].count;
}

/* Gives the socket back; datagrams still queued are freed. */
void udp_close(int sock)
{
    if (sock < 0 || sock >= NET_UDP_SOCKETS || !socks[sock].used)
        return;
    struct udp_sock *s = &socks[sock];
    mutex_lock(&udp_mutex);
    while (s->count) {
        free(s->q[s->head].data);
        s->q[s->head].data = 0;
        s->head = (uint8_t)((s->head + 1) % NET_UDP_QUEUE);
        s->count--;
    }
    s->head = 0;
    s->used = 0;
    mutex_unlock(&udp_mutex);
}
