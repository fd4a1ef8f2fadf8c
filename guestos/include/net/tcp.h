/* net/tcp.h: TCP sockets (blocking, for cooperative threads). Handles are small ints.
 * Deadlines are absolute kernel times in ns (0 = wait forever). */
#ifndef GUESTOS_NET_TCP_H
#define GUESTOS_NET_TCP_H
#include <stddef.h>
#include <stdint.h>

#define TCP_CONNS 72
#define TCP_BUF 16384
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
/* Readiness now, without blocking: TCP_POLL_* bits. IN: data or end of stream to read
 * (a listener: a connection to accept); OUT: room to send; HUP: closed or reset. */
#define TCP_POLL_IN 1
#define TCP_POLL_OUT 2
#define TCP_POLL_HUP 4
int tcp_poll(int c);
/* The local port and the peer's address of a connection (host byte order). */
int tcp_endpoints(int c, uint16_t *lport, uint32_t *rip, uint16_t *rport);

#endif
