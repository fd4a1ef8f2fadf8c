/* net/tcp.h: TCP sockets (blocking, for cooperative threads). Handles are small ints.
 * Deadlines are absolute kernel times in ns (0 = wait forever).
 *
 * Capacity: the connection table holds tcp_max_conns() connections, one per 4 KiB of
 * heap when the stack starts (about 3,900 in a 16 MiB VM); connections and their
 * buffers are allocated as needed and freed when done. A SYN that finds the table (or
 * its listener's backlog) full is answered with a RST; when the table is full the oldest
 * TIME-WAIT connection is reclaimed first. Send and receive buffers start at 4 KiB and
 * grow to TCP_BUF_MAX (256 KiB; 64 KiB for the receive side of a peer without window
 * scaling) while a connection moves data. */
#ifndef GUESTOS_NET_TCP_H
#define GUESTOS_NET_TCP_H
#include <stddef.h>
#include <stdint.h>

#define TCP_BUF_MAX 262144
#define NET_ERR_RESET (-6)
#define NET_ERR_CLOSED (-7)

int tcp_listen(uint16_t port);                       /* a listener handle or an error */
int tcp_accept(int listener, uint64_t deadline_ns);  /* a connection handle or an error */
int tcp_connect(uint32_t ip, uint16_t port, uint64_t deadline_ns);
/* Sends all len bytes (blocking while the send buffer is full); len or an error. */
int tcp_send(int c, const void *buf, size_t len, uint64_t deadline_ns);
/* Up to cap bytes; 0 at end of stream (peer closed); an error on reset/timeout. */
int tcp_recv(int c, void *buf, size_t cap, uint64_t deadline_ns);
/* Closes our side (FIN after queued data); the handle must not be used afterwards. */
void tcp_close(int c);
/* While corked (on != 0), a partial last segment is held back so that what the app
 * sends next fills it; tcp_cork(c, 0) sends it (Linux's TCP_CORK). */
void tcp_cork(int c, int on);
/* Aborts: RST to the peer, everything queued dropped; the handle is gone. */
void tcp_abort(int c);

struct tcp_stats {
    uint32_t max_conns, conns, conns_peak, time_wait, active_opens, passive_opens;
    uint32_t refused;          /* SYNs answered with RST: table or backlog full */
    uint32_t retransmits, fast_retransmits, timeouts, sack_recoveries, loss_probes;
    uint32_t ooo_segments, bad_segments, challenge_acks, listen_dropped;
    uint32_t time_wait_reused, time_wait_reclaimed, orphans_timed_out, aborts;
    uint32_t syn_evicted;      /* half-open connections dropped to make room for a new SYN */
    uint32_t cc_random;        /* tcp_cc=auto: losses judged random (no queue): window kept */
    uint32_t cc_congested;     /* tcp_cc=auto: losses judged congestion (a queue): window cut */
    uint32_t rcv_buf_peak;     /* the largest receive ring a connection grew to, bytes */
    uint32_t startup_delay_exits; /* the model's startups ended by a queue building up */
};
const struct tcp_stats *tcp_get_stats(void);
int tcp_max_conns(void);
/* Readiness now, without blocking: TCP_POLL_* bits. IN: data or end of stream to read
 * (a listener: a connection to accept); OUT: room to send; HUP: closed or reset. */
#define TCP_POLL_IN 1
#define TCP_POLL_OUT 2
#define TCP_POLL_HUP 4
int tcp_poll(int c);
/* The local port and the peer's address of a connection (host byte order). */
int tcp_endpoints(int c, uint16_t *lport, uint32_t *rip, uint16_t *rport);

#endif
