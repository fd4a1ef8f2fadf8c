/* tcp.c: TCP (RFC 9293) with a blocking socket API for cooperative threads.
 * Handshake both ways, listen queues, a sliding window with the receive window
 * advertised, MSS option, retransmission (RFC 6298 RTO, exponential backoff, go-back-N
 * from the first unacknowledged byte), zero-window probes, FIN both ways, short
 * TIME_WAIT, RST both ways. Buffers are static: no allocation per packet. Out-of-order
 * segments are dropped (the peer retransmits) and answered with a duplicate ACK. */
#include <string.h>
#include <net/tcp.h>
#include "internal.h"

enum { T_FREE, T_CLOSED, T_LISTEN, T_SYN_SENT, T_SYN_RCVD, T_ESTAB, T_FIN_WAIT_1, T_FIN_WAIT_2,
       T_CLOSE_WAIT, T_CLOSING, T_LAST_ACK, T_TIME_WAIT };

#define F_FIN 0x01
#define F_SYN 0x02
#define F_RST 0x04
#define F_PSH 0x08
#define F_ACK 0x10
#define MSS 1460
#define RTO_INIT 200000000ull
#define RTO_MIN 20000000ull
#define RTO_MAX 4000000000ull
#define MAX_RETRIES 12
#define TIME_WAIT_NS 1000000000ull

struct tcb {
    uint8_t state, app_closed, fin_queued, reset, accepted, rtt_timing;
    int16_t parent;
    uint32_t rip;
    uint16_t lport, rport, peer_mss;
    uint32_t iss, snd_una, snd_nxt, snd_wnd, rcv_nxt, rtt_seq;
    uint64_t rto, srtt, rttvar, rto_deadline, tw_deadline, rtt_start;
    int retries;
    uint32_t slen;            /* bytes in sbuf, from sequence number snd_una (data only) */
    uint32_t rhead, rlen;
    cond_t cond;
    uint8_t sbuf[TCP_BUF];
    uint8_t rbuf[TCP_BUF];
};

static struct tcb tcbs[TCP_CONNS];
static mutex_t tcp_mutex = MUTEX_INIT;
static uint8_t seg[ETH_HLEN + IP_HLEN + 24 + MSS];
static uint32_t iss_counter = 0x1000;

#define SEQ_LT(a, b) ((int32_t)((a) - (b)) < 0)
#define SEQ_LE(a, b) ((int32_t)((a) - (b)) <= 0)



static uint16_t tcp_sum(uint32_t src, uint32_t dst, const uint8_t *p, size_t len)
{
    uint32_t sum = (src >> 16) + (src & 0xffff) + (dst >> 16) + (dst & 0xffff) + 6 + (uint32_t)len;
    return ip_checksum(p, len, sum);
}

static uint16_t rcv_window(const struct tcb *t)
{
    uint32_t w = TCP_BUF - t->rlen;
    return (uint16_t)(w > 65535 ? 65535 : w);
}

/* Sends one segment: flags, sequence number, and len data bytes from sbuf offset off. */
static void send_seg(struct tcb *t, uint8_t flags, uint32_t seq, uint32_t off, uint32_t len)
{
    uint8_t *p = seg;
    size_t hlen = (flags & F_SYN) ? 24 : 20;
    put16(p, t->lport);
    put16(p + 2, t->rport);
    put32(p + 4, seq);
    put32(p + 8, (flags & F_ACK) ? t->rcv_nxt : 0);
    p[12] = (uint8_t)((hlen / 4) << 4);
    p[13] = flags;
    put16(p + 14, rcv_window(t));
    put16(p + 16, 0);
    put16(p + 18, 0);
    if (flags & F_SYN) {
        p[20] = 2;
        p[21] = 4;
        put16(p + 22, MSS);
    }
    for (uint32_t i = 0; i < len; i++) /* the send buffer is a ring indexed by seq */
        p[hlen + i] = t->sbuf[(off + i) % TCP_BUF];
    put16(p + 16, tcp_sum(net_addr, t->rip, p, hlen + len));
    ip_output(t->rip, 6, p, hlen + len);
}

static void send_rst(uint32_t dst, uint16_t sport, uint16_t dport, uint32_t seq, uint32_t ack, int with_ack)
{
    uint8_t p[20];
    put16(p, sport);
    put16(p + 2, dport);
    put32(p + 4, seq);
    put32(p + 8, ack);
    p[12] = 5 << 4;
    p[13] = F_RST | (with_ack ? F_ACK : 0);
    put16(p + 14, 0);
    put16(p + 16, 0);
    put16(p + 18, 0);
    put16(p + 16, tcp_sum(net_addr, dst, p, 20));
    ip_output(dst, 6, p, 20);
}

static void arm(struct tcb *t)
{
    t->rto_deadline = now_ns() + t->rto;
}

/* The sbuf ring is indexed by (data sequence number - iss - 1). */
static uint32_t data_off(const struct tcb *t, uint32_t seq) { return seq - t->iss - 1; }

static void output(struct tcb *t)
{
    if (t->state == T_SYN_SENT || t->state == T_SYN_RCVD || t->state < T_SYN_SENT)
        return;
    uint32_t data_end = t->snd_una + t->slen; /* sequence after the last queued byte */
    uint32_t wnd_end = t->snd_una + (t->snd_wnd ? t->snd_wnd : 0);
    while (SEQ_LT(t->snd_nxt, data_end) && SEQ_LT(t->snd_nxt, wnd_end)) {
        uint32_t n = data_end - t->snd_nxt, room = wnd_end - t->snd_nxt;
        uint32_t mss = t->peer_mss < MSS ? t->peer_mss : MSS;
        if (n > room)
            n = room;
        if (n > mss)
            n = mss;
        send_seg(t, F_ACK | F_PSH, t->snd_nxt, data_off(t, t->snd_nxt), n);
        if (!t->rtt_timing) {
            t->rtt_timing = 1;
            t->rtt_seq = t->snd_nxt + n;
            t->rtt_start = clock_ns();
        }
        t->snd_nxt += n;
        if (!t->rto_deadline)
            arm(t);
    }
    if (t->fin_queued && t->snd_nxt == data_end &&
        (t->state == T_ESTAB || t->state == T_CLOSE_WAIT)) {
        send_seg(t, F_FIN | F_ACK, t->snd_nxt, 0, 0);
        t->snd_nxt++;
        t->state = t->state == T_ESTAB ? T_FIN_WAIT_1 : T_LAST_ACK;
        if (!t->rto_deadline)
            arm(t);
    }
    if (t->slen && !t->snd_wnd && !t->rto_deadline)
        arm(t); /* zero window: the timer sends a probe */
}

static struct tcb *alloc_tcb(void)
{
    for (int i = 0; i < TCP_CONNS; i++) {
        if (tcbs[i].state == T_FREE) {
            struct tcb *t = &tcbs[i];
            memset(t, 0, offsetof(struct tcb, sbuf));
            t->state = T_CLOSED;
            t->parent = -1;
            t->rto = RTO_INIT;
            t->peer_mss = 536;
            iss_counter += 64000 + (uint32_t)(clock_ns() & 0xffff);
            t->iss = iss_counter;
            t->snd_una = t->snd_nxt = t->iss;
            return t;
        }
    }
    return 0;
}

static void wake(struct tcb *t)
{
    cond_broadcast(&t->cond);
    if (t->parent >= 0)
        cond_broadcast(&tcbs[t->parent].cond);
}

static void drop(struct tcb *t, int reset)
{
    t->state = T_CLOSED;
    t->reset = (uint8_t)reset;
    t->rto_deadline = 0;
    wake(t);
    if (t->app_closed || (t->parent >= 0 && !t->accepted))
        t->state = T_FREE;
}

static void update_rtt(struct tcb *t, uint32_t ack)
{
    if (!t->rtt_timing || SEQ_LT(ack, t->rtt_seq))
        return;
    t->rtt_timing = 0;
    uint64_t r = clock_ns() - t->rtt_start;
    if (!t->srtt) {
        t->srtt = r;
        t->rttvar = r / 2;
    } else {
        uint64_t d = t->srtt > r ? t->srtt - r : r - t->srtt;
        t->rttvar = (3 * t->rttvar + d) / 4;
        t->srtt = (7 * t->srtt + r) / 8;
    }
    t->rto = t->srtt + 4 * t->rttvar;
    if (t->rto < RTO_MIN)
        t->rto = RTO_MIN;
    if (t->rto > RTO_MAX)
        t->rto = RTO_MAX;
}

static void on_ack(struct tcb *t, uint32_t ack, uint16_t wnd)
{
    uint32_t data_end = t->snd_una + t->slen;
    if (SEQ_LT(t->snd_una, ack) && SEQ_LE(ack, t->snd_nxt)) {
        uint32_t acked = ack - t->snd_una;
        uint32_t data_acked = acked;
        if (SEQ_LT(data_end, ack)) /* our FIN was acknowledged too */
            data_acked = data_end - t->snd_una;
        t->slen -= data_acked;
        t->snd_una = ack;
        t->retries = 0;
        update_rtt(t, ack);
        t->rto_deadline = t->snd_una == t->snd_nxt ? 0 : now_ns() + t->rto;
        if (SEQ_LT(data_end, ack)) {
            if (t->state == T_FIN_WAIT_1)
                t->state = T_FIN_WAIT_2;
            else if (t->state == T_CLOSING) {
                t->state = T_TIME_WAIT;
                t->tw_deadline = now_ns() + TIME_WAIT_NS;
            } else if (t->state == T_LAST_ACK) {
                drop(t, 0);
                return;
            }
        }
        wake(t);
    }
    t->snd_wnd = wnd;
}

static struct tcb *find(uint32_t src, uint16_t sport, uint16_t dport, int *listener)
{
    *listener = -1;
    struct tcb *found = 0;
    for (int i = 0; i < TCP_CONNS; i++) {
        struct tcb *t = &tcbs[i];
        if (t->state <= T_CLOSED)
            continue;
        if (t->state == T_LISTEN) {
            if (t->lport == dport)
                *listener = i;
            continue;
        }
        if (t->lport == dport && t->rport == sport && t->rip == src && !found)
            found = t;
    }
    return found;
}

void tcp_input(uint32_t src, uint32_t dst, const uint8_t *p, size_t len)
{
    if (len < 20 || tcp_sum(src, dst, p, len) != 0) {
        net_stats.rx_bad++;
        return;
    }
    size_t hlen = (size_t)(p[12] >> 4) * 4;
    if (hlen < 20 || hlen > len) {
        net_stats.rx_bad++;
        return;
    }
    uint16_t sport = get16(p), dport = get16(p + 2), wnd = get16(p + 14);
    uint32_t seq = get32(p + 4), ack = get32(p + 8);
    uint8_t flags = p[13];
    const uint8_t *data = p + hlen;
    uint32_t dlen = (uint32_t)(len - hlen);
    uint16_t mss = 536;
    for (size_t o = 20; o + 1 < hlen;) { /* options: only MSS matters */
        uint8_t kind = p[o];
        if (kind == 0)
            break;
        if (kind == 1) {
            o++;
            continue;
        }
        uint8_t olen = p[o + 1];
        if (olen < 2 || o + olen > hlen)
            break;
        if (kind == 2 && olen == 4)
            mss = get16(p + o + 2);
        o += olen;
    }
    int li;
    struct tcb *t = find(src, sport, dport, &li);
    if (t && (flags & (F_SYN | F_ACK)) == F_SYN && li >= 0 &&
        (t->state == T_TIME_WAIT || t->state == T_LAST_ACK || t->state == T_CLOSING)) {
        /* a new connection reusing the 4-tuple of one that is ending: end the old one */
        t->rto_deadline = 0;
        t->state = T_CLOSED;
        if (t->app_closed)
            t->state = T_FREE;
        t = 0;
    }
    if (!t) {
        if (li >= 0 && (flags & (F_SYN | F_ACK | F_RST)) == F_SYN) {
            t = alloc_tcb();
            if (!t)
                return; /* no room: the peer retries */
            t->state = T_SYN_RCVD;
            t->parent = (int16_t)li;
            t->rip = src;
            t->lport = dport;
            t->rport = sport;
            t->peer_mss = mss;
            t->rcv_nxt = seq + 1;
            t->snd_wnd = wnd;
            send_seg(t, F_SYN | F_ACK, t->iss, 0, 0);
            t->snd_nxt = t->iss + 1;
            arm(t);
            return;
        }
        if (!(flags & F_RST)) {
            if (flags & F_ACK)
                send_rst(src, dport, sport, ack, 0, 0);
            else
                send_rst(src, dport, sport, 0, seq + dlen + ((flags & F_SYN) ? 1 : 0), 1);
        }
        return;
    }
    if (flags & F_RST) {
        if (t->state == T_SYN_SENT ? ((flags & F_ACK) && ack == t->snd_nxt)
                                   : (SEQ_LE(t->rcv_nxt, seq) && SEQ_LT(seq, t->rcv_nxt + 65536)))
            drop(t, 1);
        return;
    }
    if (t->state == T_SYN_SENT) {
        if ((flags & (F_SYN | F_ACK)) == (F_SYN | F_ACK) && ack == t->iss + 1) {
            t->rcv_nxt = seq + 1;
            t->snd_una = ack;
            t->snd_wnd = wnd;
            t->peer_mss = mss;
            t->rto_deadline = 0;
            t->retries = 0;
            t->state = T_ESTAB;
            send_seg(t, F_ACK, t->snd_nxt, 0, 0);
            wake(t);
        }
        return;
    }
    if (flags & F_SYN) { /* a retransmitted SYN: our SYN-ACK was lost */
        if (t->state == T_SYN_RCVD)
            send_seg(t, F_SYN | F_ACK, t->iss, 0, 0);
        else
            send_seg(t, F_ACK, t->snd_nxt, 0, 0);
        return;
    }
    if (!(flags & F_ACK))
        return;
    if (t->state == T_SYN_RCVD) {
        if (ack != t->iss + 1) {
            send_rst(src, dport, sport, ack, 0, 0);
            return;
        }
        t->snd_una = ack;
        t->state = T_ESTAB;
        t->rto_deadline = 0;
        t->retries = 0;
        wake(t);
    }
    on_ack(t, ack, wnd);
    if (t->state == T_FREE || t->state == T_CLOSED)
        return;
    int need_ack = 0;
    if (dlen || (flags & F_FIN)) {
        if (seq != t->rcv_nxt) {
            need_ack = 1; /* out of order or duplicate: tell the peer what we expect */
        } else {
            uint32_t room = TCP_BUF - t->rlen;
            uint32_t take = dlen < room ? dlen : room;
            for (uint32_t i = 0; i < take; i++)
                t->rbuf[(t->rhead + t->rlen + i) % TCP_BUF] = data[i];
            t->rlen += take;
            t->rcv_nxt += take;
            need_ack = 1;
            if ((flags & F_FIN) && take == dlen) {
                t->rcv_nxt++;
                if (t->state == T_ESTAB)
                    t->state = T_CLOSE_WAIT;
                else if (t->state == T_FIN_WAIT_1)
                    t->state = T_CLOSING;
                else if (t->state == T_FIN_WAIT_2) {
                    t->state = T_TIME_WAIT;
                    t->tw_deadline = now_ns() + TIME_WAIT_NS;
                }
            }
            if (take)
                wake(t);
            if (flags & F_FIN)
                wake(t);
        }
    }
    if (need_ack)
        send_seg(t, F_ACK, t->snd_nxt, 0, 0);
    output(t);
}

uint64_t tcp_timers(uint64_t now)
{
    uint64_t next = 0;
    for (int i = 0; i < TCP_CONNS; i++) {
        struct tcb *t = &tcbs[i];
        if (t->state == T_TIME_WAIT && t->tw_deadline <= now) {
            drop(t, 0);
            continue;
        }
        if (t->state == T_TIME_WAIT && (!next || t->tw_deadline < next))
            next = t->tw_deadline;
        if (!t->rto_deadline || t->state <= T_LISTEN)
            continue;
        if (t->rto_deadline <= now) {
            if (++t->retries > MAX_RETRIES) {
                if (t->state != T_SYN_SENT)
                    send_rst(t->rip, t->lport, t->rport, t->snd_nxt, 0, 0);
                drop(t, 1);
                continue;
            }
            t->rtt_timing = 0; /* Karn: never time a retransmission */
            t->rto = t->rto * 2 > RTO_MAX ? RTO_MAX : t->rto * 2;
            if (t->state == T_SYN_SENT)
                send_seg(t, F_SYN, t->iss, 0, 0);
            else if (t->state == T_SYN_RCVD)
                send_seg(t, F_SYN | F_ACK, t->iss, 0, 0);
            else if (t->slen && !t->snd_wnd) /* zero-window probe: one byte */
                send_seg(t, F_ACK, t->snd_una, data_off(t, t->snd_una), 1);
            else {
                t->snd_nxt = t->snd_una; /* go back to the first unacknowledged byte */
                if (t->state == T_FIN_WAIT_1 || t->state == T_LAST_ACK || t->state == T_CLOSING) {
                    if (t->slen == 0) {
                        send_seg(t, F_FIN | F_ACK, t->snd_una, 0, 0);
                        t->snd_nxt = t->snd_una + 1;
                    } else {
                        t->state = t->state == T_LAST_ACK ? T_CLOSE_WAIT : T_ESTAB;
                        output(t);
                    }
                } else {
                    output(t);
                }
            }
            t->rto_deadline = now + t->rto;
        }
        if (t->rto_deadline && (!next || t->rto_deadline < next))
            next = t->rto_deadline;
    }
    netif_flush();
    return next;
}

/* ---- the socket API (app threads) ---- */

static struct tcb *conn(int c)
{
    if (c < 0 || c >= TCP_CONNS || tcbs[c].state == T_FREE || tcbs[c].app_closed)
        return 0;
    return &tcbs[c];
}

int tcp_listen(uint16_t port)
{
    for (int i = 0; i < TCP_CONNS; i++)
        if (tcbs[i].state == T_LISTEN && tcbs[i].lport == port)
            return NET_ERR_INVAL;
    struct tcb *t = alloc_tcb();
    if (!t)
        return NET_ERR_NOBUFS;
    t->state = T_LISTEN;
    t->lport = port;
    return (int)(t - tcbs);
}

int tcp_accept(int listener, uint64_t deadline_ns)
{
    struct tcb *l = conn(listener);
    if (!l || l->state != T_LISTEN)
        return NET_ERR_INVAL;
    mutex_lock(&tcp_mutex);
    for (;;) {
        for (int i = 0; i < TCP_CONNS; i++) {
            struct tcb *t = &tcbs[i];
            if (t->parent == listener && !t->accepted && t->state >= T_ESTAB) {
                t->accepted = 1;
                mutex_unlock(&tcp_mutex);
                return i;
            }
        }
        if (cond_timedwait(&l->cond, &tcp_mutex, deadline_ns) == ETIMEDOUT) {
            mutex_unlock(&tcp_mutex);
            return NET_ERR_TIMEOUT;
        }
    }
}

int tcp_connect(uint32_t ip, uint16_t port, uint64_t deadline_ns)
{
    static uint16_t next_port;
    if (!next_port) /* spread VMs (and reboots) over the ephemeral range */
        next_port = (uint16_t)(40000 + (DENALI_VREGS->vm_id * 7919u + (uint32_t)clock_ns()) % 20000);
    struct tcb *t = alloc_tcb();
    if (!t)
        return NET_ERR_NOBUFS;
    t->rip = ip;
    t->rport = port;
    t->lport = next_port++;
    if (next_port < 40000)
        next_port = 40000;
    t->accepted = 1;
    t->state = T_SYN_SENT;
    send_seg(t, F_SYN, t->iss, 0, 0);
    t->snd_nxt = t->iss + 1;
    arm(t);
    netif_flush();
    mutex_lock(&tcp_mutex);
    while (t->state == T_SYN_SENT) {
        if (cond_timedwait(&t->cond, &tcp_mutex, deadline_ns) == ETIMEDOUT)
            break;
    }
    mutex_unlock(&tcp_mutex);
    int c = (int)(t - tcbs);
    if (t->state == T_ESTAB)
        return c;
    int err = t->reset ? NET_ERR_RESET : NET_ERR_TIMEOUT;
    t->app_closed = 1;
    t->state = T_FREE;
    return err;
}

int tcp_send(int c, const void *buf, size_t len, uint64_t deadline_ns)
{
    struct tcb *t = conn(c);
    if (!t)
        return NET_ERR_INVAL;
    const uint8_t *p = buf;
    size_t done = 0;
    mutex_lock(&tcp_mutex);
    while (done < len) {
        if (t->state != T_ESTAB && t->state != T_CLOSE_WAIT) {
            mutex_unlock(&tcp_mutex);
            return t->reset ? NET_ERR_RESET : NET_ERR_CLOSED;
        }
        uint32_t room = TCP_BUF - t->slen;
        if (!room) {
            if (cond_timedwait(&t->cond, &tcp_mutex, deadline_ns) == ETIMEDOUT) {
                mutex_unlock(&tcp_mutex);
                return NET_ERR_TIMEOUT;
            }
            continue;
        }
        uint32_t n = (uint32_t)(len - done) < room ? (uint32_t)(len - done) : room;
        uint32_t at = data_off(t, t->snd_una) + t->slen;
        for (uint32_t i = 0; i < n; i++)
            t->sbuf[(at + i) % TCP_BUF] = p[done + i];
        t->slen += n;
        done += n;
        output(t);
        netif_flush();
    }
    mutex_unlock(&tcp_mutex);
    return (int)len;
}

int tcp_recv(int c, void *buf, size_t cap, uint64_t deadline_ns)
{
    struct tcb *t = conn(c);
    if (!t)
        return NET_ERR_INVAL;
    mutex_lock(&tcp_mutex);
    while (!t->rlen) {
        if (t->state == T_CLOSED || t->state == T_FREE) {
            mutex_unlock(&tcp_mutex);
            return t->reset ? NET_ERR_RESET : 0;
        }
        if (t->state == T_CLOSE_WAIT || t->state == T_CLOSING || t->state == T_LAST_ACK ||
            t->state == T_TIME_WAIT) {
            mutex_unlock(&tcp_mutex);
            return 0; /* the peer sent FIN */
        }
        if (cond_timedwait(&t->cond, &tcp_mutex, deadline_ns) == ETIMEDOUT) {
            mutex_unlock(&tcp_mutex);
            return NET_ERR_TIMEOUT;
        }
    }
    uint8_t *out = buf;
    uint32_t n = t->rlen < cap ? t->rlen : (uint32_t)cap;
    uint16_t before = rcv_window(t);
    for (uint32_t i = 0; i < n; i++)
        out[i] = t->rbuf[(t->rhead + i) % TCP_BUF];
    t->rhead = (t->rhead + n) % TCP_BUF;
    t->rlen -= n;
    if (before < 2 * MSS && rcv_window(t) >= 2 * MSS) { /* the window reopened: say so */
        send_seg(t, F_ACK, t->snd_nxt, 0, 0);
        netif_flush();
    }
    mutex_unlock(&tcp_mutex);
    return (int)n;
}

void tcp_close(int c)
{
    struct tcb *t = conn(c);
    if (!t)
        return;
    t->app_closed = 1;
    if (t->state == T_LISTEN || t->state == T_CLOSED || t->state == T_SYN_SENT) {
        t->state = T_FREE;
        return;
    }
    if (t->rlen) { /* unread data: abort (RFC 9293 3.10.4) */
        send_rst(t->rip, t->lport, t->rport, t->snd_nxt, 0, 0);
        t->state = T_FREE;
        netif_flush();
        return;
    }
    t->fin_queued = 1;
    output(t);
    netif_flush();
}

/* Readiness without blocking (for poll/select in the Linux personality). */
int tcp_poll(int c)
{
    struct tcb *t = conn(c);
    if (!t || t->state == T_FREE)
        return TCP_POLL_HUP;
    int ev = 0;
    if (t->state == T_LISTEN) {
        for (int i = 0; i < TCP_CONNS; i++)
            if (tcbs[i].parent == c && !tcbs[i].accepted && tcbs[i].state >= T_ESTAB)
                return TCP_POLL_IN;
        return 0;
    }
    if (t->rlen || t->state == T_CLOSED || t->state == T_CLOSE_WAIT || t->state == T_CLOSING ||
        t->state == T_LAST_ACK || t->state == T_TIME_WAIT)
        ev |= TCP_POLL_IN;
    if ((t->state == T_ESTAB || t->state == T_CLOSE_WAIT) && t->slen < TCP_BUF)
        ev |= TCP_POLL_OUT;
    if (t->state == T_CLOSED || t->reset)
        ev |= TCP_POLL_HUP;
    return ev;
}

int tcp_endpoints(int c, uint16_t *lport, uint32_t *rip, uint16_t *rport)
{
    struct tcb *t = conn(c);
    if (!t || t->state == T_FREE)
        return NET_ERR_INVAL;
    *lport = t->lport;
    *rip = t->rip;
    *rport = t->rport;
    return NET_OK;
}

int tcp_busy(void)
{
    for (int i = 0; i < TCP_CONNS; i++) {
        const struct tcb *t = &tcbs[i];
        if (t->state == T_SYN_SENT || t->state == T_SYN_RCVD || t->state == T_FIN_WAIT_1 ||
            t->state == T_CLOSING || t->state == T_LAST_ACK ||
            ((t->state == T_ESTAB || t->state == T_CLOSE_WAIT) && (t->slen || t->fin_queued)))
            return 1;
    }
    return 0;
}
