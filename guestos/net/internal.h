/* internal.h: what the network stack's files share: frame layout, byte order, hooks. */
#ifndef GUESTOS_NET_INTERNAL_H
#define GUESTOS_NET_INTERNAL_H
#include <stdint.h>
#include <stddef.h>
#include <ilwaco.h>
#include <net/net.h>

#define ETH_HLEN 14
#define ETH_P_IP 0x0800
#define ETH_P_ARP 0x0806
#define IP_HLEN 20
#define FRAME_MAX 1514

static inline uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static inline void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}

extern struct net_stats net_stats;
extern uint8_t net_mac[6];
extern uint32_t net_addr, net_mask, net_gw;

/* netif.c */
int netif_open(void);
uint8_t *netif_tx_buffer(void);             /* a FRAME_MAX buffer, or NULL when the queue is full */
void netif_tx_commit(uint8_t *buf, size_t len);
void netif_flush(void);
int netif_poll(void);                       /* receives and dispatches a batch; frames handled */

/* eth.c */
void eth_input(const uint8_t *frame, size_t len);
/* Fills the Ethernet header of a tx buffer; returns where the payload goes. */
uint8_t *eth_header(uint8_t *buf, const uint8_t dst[6], uint16_t type);

/* csum.c: partial sums in machine order (see csum.c); csum_finish gives the field value. */
uint32_t csum_add(const void *data, size_t len, uint32_t sum);
uint32_t csum_copy(void *dst, const void *src, size_t len, uint32_t sum); /* copies and sums */
uint32_t csum_shift(uint32_t part, size_t offset); /* a piece's sum placed at this offset */
uint32_t csum_combine(uint32_t a, uint32_t b);
uint16_t csum_finish(uint32_t sum);
uint32_t csum_pseudo(uint32_t src, uint32_t dst, uint8_t proto, size_t len);

/* arp.c */
void arp_input(const uint8_t *pkt, size_t len);
void arp_announce(void);                    /* gratuitous ARP: tell the LAN our address */
/* The MAC for a next-hop IP: 1 and *mac filled, or 0: a request went out and this frame
 * (if not NULL) waits with the others for that address (up to ARP_HOLD). */
int arp_resolve(uint32_t ip, uint8_t mac[6], const uint8_t *frame, size_t len);
/* The MAC for a next-hop IP if it is cached and fresh: 1 and *mac filled; 0 otherwise
 * (nothing sent). */
int arp_lookup(uint32_t ip, uint8_t mac[6]);
uint64_t arp_timers(uint64_t now);
int arp_busy(void);

/* ipv4.c */
void ip_input(const uint8_t *pkt, size_t len);
/* Sends an IPv4 packet with this payload (up to NET_IP_MAX bytes; more than fits in one
 * frame is fragmented); frames to an unresolved next hop wait in ARP. */
int ip_output(uint32_t dst, uint8_t proto, const void *payload, size_t len);
/* Zero-copy output: where an L4 payload (up to IP_PAYLOAD_MAX bytes) for dst goes in a
 * transmit slot, or NULL when the next hop's MAC is not cached or no slot is free (use
 * ip_output then). ip_tx_commit fills the IP header and queues the frame. */
#define IP_PAYLOAD_MAX (FRAME_MAX - ETH_HLEN - IP_HLEN)
uint8_t *ip_tx_begin(uint32_t dst);
void ip_tx_commit(uint8_t *l4, uint8_t proto, size_t len);
/* The Internet checksum of data; initial is a sum of 16-bit words in network order. */
uint16_t ip_checksum(const void *data, size_t len, uint32_t initial);
uint64_t ip_timers(uint64_t now);
extern uint64_t net_reasm_timeout_ns;
/* Sends an ICMP error (RFC 792: destination unreachable 3, time exceeded 11) about the
 * datagram at ip (its header first); never about ICMP errors, broadcasts or
 * non-first fragments (RFC 1122 3.2.2), and at most ICMP_ERRORS_PER_S a second. */
void icmp_error(uint8_t type, uint8_t code, const uint8_t *ip, size_t len);
/* Sends a complete frame (Ethernet header without MACs filled) to a next hop. */
int eth_send_to(uint32_t next_hop, const uint8_t *frame, size_t len);

/* icmp.c, udp.c: to_us is 0 for datagrams sent to a broadcast address; ip is the whole
 * datagram (header first), for ICMP errors about it. */
void icmp_input(uint32_t src, int to_us, const uint8_t *pkt, size_t len);
void udp_input(uint32_t src, uint32_t dst, const uint8_t *pkt, size_t len, const uint8_t *ip, size_t iplen);

/* tcp.c */
void tcp_init(void);                          /* sizes the connection table from memory */
void tcp_rekey(void);                         /* a new ISN secret and ephemeral start (clones) */
void tcp_input(uint32_t src, uint32_t dst, const uint8_t *pkt, size_t len);
uint64_t tcp_timers(uint64_t now);
void tcp_flush_acks(void);                    /* ACKs owed for a receive batch go out */
int tcp_busy(void);                           /* data, a FIN or a handshake unacknowledged */

/* net.c */
void net_timer_changed(uint64_t deadline);    /* a protocol's earliest deadline moved earlier */
int tcp_busy(void);

#endif
