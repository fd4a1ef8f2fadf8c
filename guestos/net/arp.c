/* arp.c: ARP (RFC 826): a bounded cache with timeouts, requests with retries, up to
 * ARP_HOLD frames waiting per unresolved address (a whole fragmented datagram fits;
 * beyond that the oldest is dropped, RFC 1122 2.3.2.2), and replies for our own address. */
#include <stdlib.h>
#include <string.h>
#include "internal.h"

#define ARP_HOLD 48

struct held {
    struct held *next;
    uint16_t len;
    uint8_t data[];
};

#define ARP_ENTRIES 64
#define ARP_TTL_NS 60000000000ull
#define ARP_RETRY_NS 200000000ull
#define ARP_RETRIES 5

enum { FREE, PENDING, VALID };

struct arp_entry {
    uint32_t ip;
    uint8_t mac[6];
    uint8_t state, tries;
    uint64_t expires; /* VALID: end of life; PENDING: next retry */
    struct held *held, *held_tail; /* frames waiting for this address, oldest first */
    int nheld;
};

static struct arp_entry cache[ARP_ENTRIES];
static const uint8_t broadcast[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};

static void arp_send(uint16_t op, const uint8_t *tha, uint32_t tpa, const uint8_t *eth_dst)
{
    uint8_t *buf = netif_tx_buffer();
    if (!buf)
        return;
    uint8_t *p = eth_header(buf, eth_dst, ETH_P_ARP);
    put16(p, 1);          /* Ethernet */
    put16(p + 2, ETH_P_IP);
    p[4] = 6;
    p[5] = 4;
    put16(p + 6, op);
    memcpy(p + 8, net_mac, 6);
    put32(p + 14, net_addr);
    memcpy(p + 18, tha, 6);
    put32(p + 24, tpa);
    netif_tx_commit(buf, ETH_HLEN + 28);
}

static struct arp_entry *find(uint32_t ip)
{
    static struct arp_entry *last; /* most lookups are for the peer of the last one */
    if (last && last->state != FREE && last->ip == ip)
        return last;
    for (int i = 0; i < ARP_ENTRIES; i++)
        if (cache[i].state != FREE && cache[i].ip == ip)
            return last = &cache[i];
    return 0;
}

static void drop_held(struct arp_entry *e)
{
    while (e->held) {
        struct held *h = e->held;
        e->held = h->next;
        free(h);
    }
    e->held_tail = 0;
    e->nheld = 0;
}

static struct arp_entry *slot_for(uint32_t ip)
{
    struct arp_entry *e = find(ip), *oldest = &cache[0];
    if (e)
        return e;
    for (int i = 0; i < ARP_ENTRIES; i++) {
        if (cache[i].state == FREE)
            return &cache[i];
        if (cache[i].expires < oldest->expires)
            oldest = &cache[i];
    }
    drop_held(oldest);
    return oldest; /* evict the entry closest to expiry */
}

static void learn(uint32_t ip, const uint8_t *mac)
{
    struct arp_entry *e = slot_for(ip);
    int was_pending = e->state == PENDING && e->ip == ip;
    e->ip = ip;
    memcpy(e->mac, mac, 6);
    e->state = VALID;
    e->expires = now_ns() + ARP_TTL_NS;
    if (was_pending) {
        for (struct held *h = e->held; h; h = h->next) {
            uint8_t *buf = netif_tx_buffer();
            if (!buf)
                break;
            memcpy(buf, h->data, h->len);
            memcpy(buf, mac, 6);
            netif_tx_commit(buf, h->len);
        }
    }
    drop_held(e);
}

void arp_input(const uint8_t *p, size_t len)
{
    if (len < 28 || get16(p) != 1 || get16(p + 2) != ETH_P_IP || p[4] != 6 || p[5] != 4) {
        net_stats.rx_bad++;
        return;
    }
    uint16_t op = get16(p + 6);
    uint32_t spa = get32(p + 14), tpa = get32(p + 24);
    if (tpa != net_addr || !net_addr) {
        /* RFC 826 merge: refresh an entry we hold (an announcement by a host that
         * took over an address updates us); never add one for a stranger. */
        struct arp_entry *e = spa ? find(spa) : 0;
        if (e && e->state == VALID)
            learn(spa, p + 8);
        return;
    }
    if (spa)
        learn(spa, p + 8);
    if (op == 1) {
        net_stats.arp_replies++;
        arp_send(2, p + 8, spa, p + 8);
    }
}

void arp_announce(void)
{
    /* RFC 5227 announcement: a request for our own address. The switch learns the
     * binding from it and answers later requests for us without waking every VM. */
    arp_send(1, (const uint8_t *)"\0\0\0\0\0\0", net_addr, broadcast);
    netif_flush();
}

int arp_resolve(uint32_t ip, uint8_t mac[6], const uint8_t *frame, size_t len)
{
    struct arp_entry *e = find(ip);
    if (e && e->state == VALID && e->expires > now_ns()) {
        memcpy(mac, e->mac, 6);
        return 1;
    }
    if (!e || e->state != PENDING) {
        e = slot_for(ip);
        e->ip = ip;
        e->state = PENDING;
        e->tries = 1;
        drop_held(e);
        e->expires = now_ns() + ARP_RETRY_NS;
        net_stats.arp_requests++;
        arp_send(1, (const uint8_t *)"\0\0\0\0\0\0", ip, broadcast);
    }
    if (frame && len <= FRAME_MAX) {
        if (e->nheld >= ARP_HOLD) {
            struct held *old = e->held;
            e->held = old->next;
            free(old);
            e->nheld--;
            if (!e->held)
                e->held_tail = 0;
        }
        struct held *h = malloc(sizeof *h + len);
        if (h) {
            h->next = 0;
            h->len = (uint16_t)len;
            memcpy(h->data, frame, len);
            if (e->held_tail)
                e->held_tail->next = h;
            else
                e->held = h;
            e->held_tail = h;
            e->nheld++;
        }
    }
    return 0;
}

uint64_t arp_timers(uint64_t now)
{
    uint64_t next = 0;
    for (int i = 0; i < ARP_ENTRIES; i++) {
        struct arp_entry *e = &cache[i];
        if (e->state == VALID && e->expires <= now)
            e->state = FREE;
        if (e->state != PENDING)
            continue;
        if (e->expires <= now) {
            if (e->tries >= ARP_RETRIES) {
                net_stats.arp_unresolved += e->nheld ? 1 : 0;
                drop_held(e);
                e->state = FREE;
                continue;
            }
            e->tries++;
            e->expires = now + ARP_RETRY_NS;
            net_stats.arp_requests++;
            arp_send(1, (const uint8_t *)"\0\0\0\0\0\0", e->ip, broadcast);
        }
        if (!next || e->expires < next)
            next = e->expires;
    }
    return next;
}

int arp_lookup(uint32_t ip, uint8_t mac[6])
{
    struct arp_entry *e = find(ip);
    if (!e || e->state != VALID || e->expires <= now_ns())
        return 0;
    memcpy(mac, e->mac, 6);
    return 1;
}

int arp_busy(void)
{
    for (int i = 0; i < ARP_ENTRIES; i++)
        if (cache[i].state == PENDING && cache[i].nheld)
            return 1;
    return 0;
}
