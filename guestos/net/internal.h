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

/* arp.c */
void arp_input(const uint8_t *pkt, size_t len);
void arp_announce(void);                    /* gratuitous ARP: tell the LAN our address */
/* The MAC for a next-hop IP: 1 and *mac filled, or 0: a request went out and this frame
 * (if not NULL) waits, replacing an older waiting one. */
int arp_resolve(uint32_t ip, uint8_t mac[6], const uint8_t *frame, size_t len);
uint64_t arp_timers(uint64_t now);
int arp_busy(void);

/* ipv4.c */
void ip_input(const uint8_t *pkt, size_t len);
/* Sends an IPv4 packet with this payload (at most FRAME_MAX - ETH_HLEN - IP_HLEN bytes);
 * an unresolved next hop keeps one packet pending in ARP. NET_OK or an error. */
int ip_output(uint32_t dst, uint8_t proto, const void *payload, size_t len);
uint16_t ip_checksum(const void *data, size_t len, uint32_t initial);
/* Sends a complete frame (Ethernet header without MACs filled) to a next hop. */
int eth_send_to(uint32_t next_hop, const uint8_t *frame, size_t len);

/* icmp.c, udp.c */
void icmp_input(uint32_t src, const uint8_t *pkt, size_t len);
void udp_input(uint32_t src, uint32_t dst, const uint8_t *pkt, size_t len);

/* tcp.c */
void tcp_input(uint32_t src, uint32_t dst, const uint8_t *pkt, size_t len);
uint64_t tcp_timers(uint64_t now);
int tcp_busy(void);

#endif
