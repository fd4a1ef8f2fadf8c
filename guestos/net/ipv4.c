/* ipv4.c: IPv4 (RFC 791, RFC 1122 3.3): header checks, checksums, dispatch, routing,
 * output with fragmentation, and fragment reassembly.
 *
 * Reassembly (RFC 791 3.2, RFC 815): up to REASM_SLOTS datagrams at once, each kept in a
 * buffer that grows to the datagram's size (at most NET_IP_MAX bytes, the IPv4 limit,
 * and never more than net_reasm_budget bytes over all datagrams, an eighth of the heap)
 * with a bitmap of the 8-byte blocks received. A datagram not complete REASM_TIMEOUT
 * after its first fragment is discarded (RFC 1122 3.3.2: 60 to 120 s suggested; a LAN
 * needs less; "ipfrag_ms=N" sets it) and, if its first fragment came, answered with ICMP time exceeded (code 1).
 * When every slot is busy the oldest datagram is given up for a new one. Overlapping
 * fragments overwrite: the datagram is checked end to end by its transport checksum. */
#include <stdlib.h>
#include <string.h>
#include "internal.h"

#define REASM_SLOTS 8
#define REASM_TIMEOUT_NS 15000000000ull

uint64_t net_reasm_timeout_ns = REASM_TIMEOUT_NS; /* "ipfrag_ms=N" on the command line */
uint32_t net_addr, net_mask, net_gw;
static uint16_t ip_id;
static uint8_t scratch[FRAME_MAX];

struct reasm {
    uint32_t src, dst;
    uint16_t id;
    uint8_t proto, used;
    uint32_t size;       /* buffer bytes (payload) */
    uint32_t total;      /* payload length once the last fragment came; 0 before */
    uint64_t expires;
    uint8_t *data;       /* payload, then (size / 8 + 7) / 8 bytes of bitmap after it */
    uint8_t hdr[60];     /* the first fragment's header, for the ICMP error */
    uint8_t have_first, hdr_len;
};

static struct reasm rq[REASM_SLOTS];
static size_t reasm_bytes, reasm_budget;

static int is_broadcast(uint32_t dst)
{
    return dst == 0xffffffffu || dst == (net_addr | ~net_mask);
}

static void deliver(uint32_t src, uint32_t dst, uint8_t proto, const uint8_t *ip, size_t iplen,
                    const uint8_t *payload, size_t plen)
{
    if (proto == 1)
        icmp_input(src, dst == net_addr, payload, plen);
    else if (proto == 17)
        udp_input(src, dst, payload, plen, ip, iplen);
    else if (proto == 6 && dst == net_addr) /* never TCP to a broadcast address */
        tcp_input(src, dst, payload, plen);
}

static void reasm_free(struct reasm *r)
{
    if (r->data) {
        free(r->data);
        reasm_bytes -= r->size + (r->size / 8 + 7) / 8;
    }
    memset(r, 0, sizeof *r);
}

/* Grows r's buffer to hold need payload bytes; 0 when the budget or the heap says no. */
static int reasm_grow(struct reasm *r, uint32_t need)
{
    if (need <= r->size)
        return 1;
    uint32_t size = r->size ? r->size : 2048;
    while (size < need)
        size *= 2;
    if (size > NET_IP_MAX + 8)
        size = (NET_IP_MAX + 8) & ~7u;
    if (size < need)
        return 0;
    size_t old_total = r->size + (r->size / 8 + 7) / 8, total = size + (size / 8 + 7) / 8;
    if (reasm_bytes - old_total + total > reasm_budget)
        return 0;
    uint8_t *d = malloc(total);
    if (!d)
        return 0;
    memset(d, 0, total);
    if (r->data) {
        memcpy(d, r->data, r->size);
        memcpy(d + size, r->data + r->size, (r->size / 8 + 7) / 8);
        free(r->data);
    }
    reasm_bytes = reasm_bytes - old_total + total;
    r->data = d;
    r->size = size;
    return 1;
}

static int reasm_complete(const struct reasm *r)
{
    if (!r->total)
        return 0;
    const uint8_t *bits = r->data + r->size;
    uint32_t blocks = (r->total + 7) / 8;
    for (uint32_t b = 0; b < blocks; b++)
        if (!(bits[b / 8] & (1u << (b % 8))))
            return 0;
    return 1;
}

static void reassemble(const uint8_t *p, size_t hlen, size_t total, uint32_t src, uint32_t dst)
{
    uint16_t id = get16(p + 4), frag = get16(p + 6);
    uint32_t off = (uint32_t)(frag & 0x1fff) * 8, len = (uint32_t)(total - hlen);
    int more = (frag & 0x2000) != 0;
    if ((more && (len % 8 || len == 0)) || off + len > NET_IP_MAX) {
        net_stats.ip_frag_bad++;
        return;
    }
    struct reasm *r = 0, *freeslot = 0, *oldest = 0;
    for (int i = 0; i < REASM_SLOTS; i++) {
        struct reasm *q = &rq[i];
        if (!q->used) {
            if (!freeslot)
                freeslot = q;
            continue;
        }
        if (q->src == src && q->dst == dst && q->id == id && q->proto == p[9]) {
            r = q;
            break;
        }
        if (!oldest || q->expires < oldest->expires)
            oldest = q;
    }
    if (!r) {
        r = freeslot;
        if (!r) {
            net_stats.ip_reasm_dropped++;
            reasm_free(oldest);
            r = oldest;
        }
        r->used = 1;
        r->src = src;
        r->dst = dst;
        r->id = id;
        r->proto = p[9];
        r->expires = now_ns() + net_reasm_timeout_ns;
    }
    if (!reasm_grow(r, off + len) || (!more && r->total && r->total != off + len)) {
        net_stats.ip_reasm_dropped++;
        reasm_free(r);
        return;
    }
    memcpy(r->data + off, p + hlen, len);
    uint8_t *bits = r->data + r->size;
    for (uint32_t b = off / 8; b < (off + len + 7) / 8; b++)
        bits[b / 8] |= (uint8_t)(1u << (b % 8));
    if (!more)
        r->total = off + len;
    if (off == 0 && hlen <= sizeof r->hdr) {
        memcpy(r->hdr, p, hlen);
        r->hdr_len = (uint8_t)hlen;
        r->have_first = 1;
    }
    if (!reasm_complete(r))
        return;
    net_stats.ip_reassembled++;
    /* the ICMP error path wants the header before the payload: rebuild it in front */
    uint8_t *whole = malloc(r->hdr_len + r->total);
    if (whole) {
        memcpy(whole, r->hdr, r->hdr_len);
        put16(whole + 2, (uint16_t)(r->hdr_len + r->total));
        put16(whole + 6, 0);
        memcpy(whole + r->hdr_len, r->data, r->total);
        deliver(src, dst, r->proto, whole, r->hdr_len + r->total, whole + r->hdr_len, r->total);
        free(whole);
    } else {
        net_stats.ip_reasm_dropped++;
    }
    reasm_free(r);
}

uint64_t ip_timers(uint64_t now)
{
    uint64_t next = 0;
    for (int i = 0; i < REASM_SLOTS; i++) {
        struct reasm *r = &rq[i];
        if (!r->used)
            continue;
        if (r->expires <= now) {
            net_stats.ip_reasm_timeouts++;
            if (r->have_first && r->dst == net_addr) {
                /* RFC 792/1122: time exceeded in reassembly, about the first fragment */
                uint8_t buf[60 + 8];
                size_t n = r->hdr_len;
                memcpy(buf, r->hdr, n);
                memcpy(buf + n, r->data, 8);
                icmp_error(11, 1, buf, n + 8);
            }
            reasm_free(r);
            continue;
        }
        if (!next || r->expires < next)
            next = r->expires;
    }
    return next;
}

void ip_input(const uint8_t *p, size_t len)
{
    if (len < IP_HLEN || (p[0] >> 4) != 4) {
        net_stats.rx_bad++;
        return;
    }
    size_t hlen = (size_t)(p[0] & 15) * 4;
    size_t total = get16(p + 2);
    if (hlen < IP_HLEN || total < hlen || total > len) {
        net_stats.rx_bad++;
        return;
    }
    if (ip_checksum(p, hlen, 0) != 0) {
        net_stats.ip_bad_checksum++;
        return;
    }
    uint32_t src = get32(p + 12), dst = get32(p + 16);
    if (dst != net_addr && !is_broadcast(dst)) {
        net_stats.ip_not_ours++;
        return;
    }
    if (get16(p + 6) & 0x3fff) { /* MF set or a fragment offset */
        net_stats.ip_fragments++;
        if (!reasm_budget)
            reasm_budget = heap_free_bytes() / 8;
        reassemble(p, hlen, total, src, dst);
        return;
    }
    deliver(src, dst, p[9], p, total, p + hlen, total - hlen);
}

int eth_send_to(uint32_t next_hop, const uint8_t *frame, size_t len)
{
    uint8_t mac[6];
    if (!arp_resolve(next_hop, mac, frame, len))
        return NET_OK; /* waits in ARP */
    uint8_t *buf = netif_tx_buffer();
    if (!buf)
        return NET_ERR_NOBUFS;
    memcpy(buf, frame, len);
    memcpy(buf, mac, 6);
    netif_tx_commit(buf, len);
    return NET_OK;
}

static uint32_t next_hop(uint32_t dst)
{
    return ((dst ^ net_addr) & net_mask) == 0 ? dst : net_gw;
}

static void ip_header(uint8_t *ip, uint8_t proto, uint32_t dst, size_t len, uint16_t id, uint16_t frag)
{
    ip[0] = 0x45;
    ip[1] = 0;
    put16(ip + 2, (uint16_t)(IP_HLEN + len));
    put16(ip + 4, id);
    put16(ip + 6, frag);
    ip[8] = 64;
    ip[9] = proto;
    put16(ip + 10, 0);
    put32(ip + 12, net_addr);
    put32(ip + 16, dst);
    put16(ip + 10, ip_checksum(ip, IP_HLEN, 0));
}

uint8_t *ip_tx_begin(uint32_t dst)
{
    uint8_t mac[6];
    uint32_t hop = next_hop(dst);
    if (!hop || is_broadcast(dst) || !arp_lookup(hop, mac))
        return 0;
    uint8_t *buf = netif_tx_buffer();
    if (!buf)
        return 0;
    eth_header(buf, mac, ETH_P_IP);
    put32(buf + ETH_HLEN + 16, dst);
    return buf + ETH_HLEN + IP_HLEN;
}

void ip_tx_commit(uint8_t *l4, uint8_t proto, size_t len)
{
    uint8_t *ip = l4 - IP_HLEN;
    ip_header(ip, proto, get32(ip + 16), len, ++ip_id, 0x4000);
    netif_tx_commit(ip - ETH_HLEN, ETH_HLEN + IP_HLEN + len);
}

/* One frame: header + payload piece, to the broadcast address or the next hop. */
static int send_piece(uint32_t dst, uint8_t proto, const uint8_t *piece, size_t n, uint16_t id, uint16_t frag)
{
    uint8_t *ip = eth_header(scratch, (const uint8_t *)"\0\0\0\0\0\0", ETH_P_IP);
    ip_header(ip, proto, dst, n, id, frag);
    memcpy(ip + IP_HLEN, piece, n);
    size_t flen = ETH_HLEN + IP_HLEN + n;
    if (is_broadcast(dst)) {
        uint8_t *buf = netif_tx_buffer();
        if (!buf)
            return NET_ERR_NOBUFS;
        memcpy(buf, scratch, flen);
        memset(buf, 0xff, 6);
        netif_tx_commit(buf, flen);
        return NET_OK;
    }
    uint32_t hop = next_hop(dst);
    if (!hop)
        return NET_ERR_INVAL;
    return eth_send_to(hop, scratch, flen);
}

int ip_output(uint32_t dst, uint8_t proto, const void *payload, size_t len)
{
    if (len > NET_IP_MAX - IP_HLEN)
        return NET_ERR_INVAL;
    const uint8_t *p = payload;
    uint16_t id = ++ip_id;
    if (len <= IP_PAYLOAD_MAX)
        return send_piece(dst, proto, p, len, id, 0x4000); /* don't fragment */
    /* RFC 791: pieces of 1480 bytes (a multiple of 8), MF on all but the last */
    const size_t piece = IP_PAYLOAD_MAX & ~7u;
    for (size_t off = 0; off < len; off += piece) {
        size_t n = len - off < piece ? len - off : piece;
        uint16_t frag = (uint16_t)(off / 8) | (off + n < len ? 0x2000 : 0);
        int r = send_piece(dst, proto, p + off, n, id, frag);
        if (r != NET_OK)
            return r;
        net_stats.ip_frags_sent++;
    }
    return NET_OK;
}
