/* net/net.h: the guest network stack (Ethernet, ARP, IPv4, ICMP, UDP).
 *
 * net_start() reads "ip=A.B.C.D/N [gw=A.B.C.D] [ipfrag_ms=N] [netbatch=N]" from the command
 * line (ipfrag_ms: how long a partly reassembled datagram waits), opens the NIC and
 * starts the network thread, which receives frames in batches, answers ARP and ICMP
 * echo, queues UDP datagrams for their sockets, and runs timers; when nothing waits it
 * blocks in irq_wait(NET_RX, earliest timer) so the VM idles. Addresses are in host
 * byte order in this API. Buffers (TCP connections and their data, reassembly, UDP
 * datagrams) come from the heap as needed and go back to it when done. */
#ifndef GUESTOS_NET_NET_H
#define GUESTOS_NET_NET_H
#include <stddef.h>
#include <stdint.h>

#define NET_OK 0
#define NET_ERR_NODEV (-1)
#define NET_ERR_CONFIG (-2)
#define NET_ERR_TIMEOUT (-3)
#define NET_ERR_NOBUFS (-4)
#define NET_ERR_INVAL (-5)

struct net_stats {
    uint32_t rx_frames, tx_frames, tx_full, rx_bad, arp_replies, arp_requests, arp_unresolved;
    uint32_t ip_bad_checksum, ip_fragments, ip_not_ours, icmp_echo_replies, udp_no_port, udp_rx, udp_drop;
    uint32_t ip_reassembled, ip_reasm_timeouts, ip_reasm_dropped, ip_frag_bad, ip_frags_sent;
    uint32_t icmp_errors_sent, icmp_broadcast_ignored;
};

/* The largest IPv4 datagram (header included) sent or reassembled. */
#define NET_IP_MAX 65535

/* Starts the stack from the command line; NET_OK, NET_ERR_NODEV or NET_ERR_CONFIG. */
int net_start(void);
uint32_t net_ip(void);
/* Nonzero while frames wait for an ARP answer or TCP data, a FIN or a handshake is not
 * yet acknowledged (a guest that is about to exit can let them finish). */
int net_busy(void);
const struct net_stats *net_get_stats(void);
/* "10.0.0.1" -> host-order address; 0 when malformed. */
uint32_t net_parse_ip(const char *s);

/* Sends one ICMP echo request and waits up to timeout_ns for its reply: NET_OK or NET_ERR_TIMEOUT. */
int net_ping(uint32_t dst, uint16_t seq, uint64_t timeout_ns);

/* UDP: at most NET_UDP_SOCKETS bound ports, each with a queue of NET_UDP_QUEUE datagrams
 * (each allocated at its size). Datagrams up to NET_UDP_MAX bytes are sent (fragmented
 * when over 1472) and received (reassembled). A datagram to an unbound port is answered
 * with ICMP port unreachable. */
#define NET_UDP_SOCKETS 8
#define NET_UDP_QUEUE 16
#define NET_UDP_MAX (NET_IP_MAX - 20 - 8)
int udp_bind(uint16_t port); /* a socket handle >= 0, or NET_ERR_NOBUFS */
int udp_sendto(int sock, uint32_t dst, uint16_t dport, const void *buf, size_t len);
/* Waits for a datagram until deadline_ns (0 = forever); returns its length or NET_ERR_TIMEOUT. */
int udp_recvfrom(int sock, void *buf, size_t cap, uint32_t *src, uint16_t *sport, uint64_t deadline_ns);
/* Datagrams waiting (without blocking), and giving a socket back. */
int udp_pending(int sock);
void udp_close(int sock);

#endif
