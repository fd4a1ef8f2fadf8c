/* tcp.c: TCP (RFC 9293) with a blocking socket API for cooperative threads.
 *
 * Connections: allocated on demand, found through a hash table on (remote address,
 * remote port, local port); at most tcp_max connections (one per 4 KiB of heap at start).
 * Listeners keep an accept queue and a backlog (SYN-RECEIVED + not yet accepted); a SYN
 * that finds the table or the backlog full takes the place of the oldest half-open
 * connection (RFC 4987's "drop oldest", so a SYN flood cannot lock clients out), and
 * one that still finds no room is answered with RST, never silence.
 *
 * Sending: a ring per connection indexed by sequence number (grows from 4 KiB to
 * TCP_BUF_MAX). Segments are built straight in the NIC's transmit slots, the payload
 * copied from the ring with the checksum folded into the copy. Congestion control per
 * RFC 5681 (initial window of 10 segments, RFC 6928; slow start, congestion avoidance),
 * limited transmit (RFC 3042), fast retransmit and NewReno fast recovery (RFC 6582), and,
 * when the peer offers it, SACK (RFC 2018) driving loss recovery as RFC 6675 does (a
 * scoreboard of SACKed ranges, a pipe estimate, holes retransmitted in order).
 * Retransmission timeout per RFC 6298 (Karn's algorithm, exponential backoff undone on
 * progress), tail loss probes and a time-based resend of a lost retransmission of the
 * first hole (after RFC 8985), early retransmit for small flights (RFC 5827), window
 * reduction by 0.7 (RFC 9438's factor), window scaling (RFC 7323). Congestion control
 * (tcp_cc= on the command line; see use_model): SACK connections size the window from
 * the path's delivery rate and minimum RTT (BBR-like, see model_on_ack) while their
 * losses come without a queue (random loss), and fall back to the loss-based window
 * when a loss comes with a queue built up (congestion: other flows share the path).
 * tcp_cc=loss is always loss-based, tcp_cc=model never shrinks the window on loss.
 *
 * Receiving: a ring indexed by sequence number, growing while the application lags or
 * the peer sends up to the window's edge (it is window-limited: a window that does not
 * grow with the path would hold it to a few segments per round trip);
 * out-of-order segments are kept in place (up to OOO_MAX ranges) and reported in SACK
 * blocks; ACKs for in-order data are coalesced per receive batch (tcp_flush_acks), ACKs
 * for out-of-order data go at once (the peer counts them). The checksum of an in-order
 * segment is folded into its copy into the ring; nothing is committed before it checks.
 *
 * Robustness: RFC 9293 3.10.7 LISTEN rules (RST ignored; ACK answered with RST; FIN,
 * NULL, Xmas and other SYN-less segments dropped), segment acceptability tests, RFC 5961
 * challenge ACKs for in-window RSTs, SYNs on synchronized connections and unacceptable
 * ACKs (rate limited), TIME-WAIT reuse for a new SYN with a higher sequence number (RFC
 * 9293 3.6.1, RFC 6191's rule without timestamps), zero-window probes, timeouts for
 * orphaned FIN-WAIT-2 connections.
 *
 * Timers: each connection has one deadline (retransmission, probe or orphan timeout) and
 * sits in a min-heap on it while it has one (TIME-WAIT connections wait in a FIFO
 * instead), so a timer pass costs only the connections that are due; whenever the earliest deadline moves
 * earlier, the network thread is woken (net_timer_changed) to wait on the new one.
 * Coarse times come from the virtual registers (now_ns: no trap, as of the slice's start);
 * the retransmission timer and RTT samples from the exact clock. */
#include <stdlib.h>
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
#define F_URG 0x20
#define MSS 1460
#define RTO_INIT 200000000ull
#define RTO_MIN 15000000ull
#define RTO_MAX 8000000000ull
#define MAX_RETRIES 12
#define SYN_RETRIES 6
#define TIME_WAIT_NS 2000000000ull
#define ORPHAN_NS 10000000000ull
#define BUF_MIN 4096
#define OOO_MAX 8
#define SB_MAX 8
#define CHALLENGE_PER_S 1000
#define IW_SEGS 10
#define WS_SHIFT 2 /* our window scale (RFC 7323): 64 KiB << 2 = TCP_BUF_MAX */
#define BW_ROUNDS 10 /* the model's bandwidth filter: the highest of this many rounds */
#define STARTUP_QUEUE_NS 4000000ull /* the model's startup ends at this much queueing delay */
#define QUEUE_MIN_NS 3000000ull /* an RTT this much (or a quarter) above the minimum: a queue */

struct tcb {
    struct tcb *hnext;                 /* hash chain (or the listener list) */
    uint32_t hpos;                     /* index in the deadline heap, when in_timers */
    struct tcb *anext, *twprev;        /* accept queue / TIME-WAIT FIFO (doubly linked) */
    struct tcb *acknext;               /* owes an ACK at the end of this batch */
    struct tcb *synnext, *synprev;     /* the SYN-RECEIVED FIFO (oldest first) */
    struct tcb *parent;                /* the listener that made it (until accepted) */
    uint8_t state, app_closed, fin_queued, fin_sent, fin_acked, reset, accepted, rtt_timing;
    uint8_t in_timers, ack_pending, in_recovery, sack_ok, dupacks, fin_rcvd, hashed, queued;
    uint8_t lclosed;                   /* a listener the app closed, kept for its children */
    uint8_t in_syn;                    /* on the SYN-RECEIVED FIFO */
    uint8_t corked;                    /* tcp_cork: hold a partial last segment */
    uint8_t rxt_mark;                  /* dupacks when the holes were last (re)sent */
    uint8_t snd_shift, rcv_shift, ws_ok; /* window scaling, when both SYNs offered it */
    uint8_t tlp_armed, tlp_sent;       /* tail loss probe (RFC 8985 7) */
    /* the model-based congestion control (tcp_cc=model): delivery rate per round trip */
    uint8_t bw_i, pipe_full, full_rounds;
    uint8_t congested;                 /* tcp_cc=auto: the last loss came with a queue */
    uint32_t bw[BW_ROUNDS];            /* bytes delivered per ms, one per round */
    uint32_t full_bw, round_end, round_delivered;
    uint64_t round_start, min_rtt, last_rtt;
    uint64_t rcvq_start;               /* receive-window tuning: the round trip began */
    uint32_t rcvq_seq;                 /* ... at this rcv_nxt */
    uint64_t una_rxt_at;               /* when the segment at snd_una was last resent */
    int handle;
    uint32_t rip;
    uint16_t lport, rport, mss;
    uint32_t pending, backlog;         /* listeners: SYN-RECEIVED + queued children; bound */
    struct tcb *aq_head, *aq_tail;     /* listeners: established, not yet accepted */
    /* send side */
    uint32_t iss, snd_una, snd_nxt, snd_max, snd_wnd, snd_wl1, snd_wl2, max_wnd;
    uint32_t cwnd, ssthresh, recover, high_rxt, fin_seq, rtt_seq;
    uint64_t rto, srtt, rttvar, rtt_start, rto_deadline, misc_deadline, deadline;
    int retries;
    uint8_t *sbuf;
    uint32_t ssize, slen;              /* ring bytes; queued data bytes from snd_una */
    uint32_t sacked[SB_MAX][2];        /* peer's SACKed ranges above snd_una, sorted */
    int nsacked;
    /* receive side */
    uint32_t irs, rcv_nxt, rcv_adv, rfin_seq;
    uint8_t *rbuf;
    uint32_t rsize, rlen;              /* ring bytes; in-order unread bytes before rcv_nxt */
    uint32_t ooo[OOO_MAX][2];          /* out-of-order ranges held above rcv_nxt, sorted */
    int nooo, ooo_last;
    cond_t cond;
};

static struct tcb **htab, **handles;
static uint32_t hmask;
static int tcp_max, *free_handles, nfree_handles;
static struct tcb **theap; /* connections with a deadline (not TIME-WAIT): a min-heap on it */
static uint32_t theap_n;
static struct tcb *listeners, *ack_list, *tw_head, *tw_tail, *syn_head, *syn_tail;
static uint64_t tcp_next;
static mutex_t tcp_mutex = MUTEX_INIT;
static uint8_t seg[IP_PAYLOAD_MAX];
static uint32_t iss_secret;
enum { CC_AUTO, CC_LOSS, CC_MODEL };
static int cc_mode; /* tcp_cc= on the command line (auto, loss, model): see use_model */
static struct tcp_stats st;

#define SEQ_LT(a, b) ((int32_t)((a) - (b)) < 0)
#define SEQ_LE(a, b) ((int32_t)((a) - (b)) <= 0)
#define SEQ_GT(a, b) ((int32_t)((a) - (b)) > 0)
#define SEQ_GE(a, b) ((int32_t)((a) - (b)) >= 0)

static uint32_t umin(uint32_t a, uint32_t b) { return a < b ? a : b; }
static uint32_t umax(uint32_t a, uint32_t b) { return a > b ? a : b; }
static uint64_t umax64(uint64_t a, uint64_t b) { return a > b ? a : b; }

const struct tcp_stats *tcp_get_stats(void)
{
    return &st;
}

int tcp_max_conns(void)
{
    return tcp_max;
}

void tcp_init(void)
{
    if (tcp_max)
        return;
    size_t heap = heap_free_bytes();
    long n = (long)(heap / 4096);
    tcp_max = (int)(n < 64 ? 64 : n > 65535 ? 65535 : n);
    uint32_t buckets = 64;
    while (buckets < (uint32_t)tcp_max)
        buckets *= 2;
    hmask = buckets - 1;
    htab = calloc(buckets, sizeof *htab);
    handles = calloc((size_t)tcp_max, sizeof *handles);
    free_handles = malloc((size_t)tcp_max * sizeof *free_handles);
    theap = malloc((size_t)tcp_max * sizeof *theap); /* every tcb has a handle: at most tcp_max */
    for (int i = 0; i < tcp_max; i++)
        free_handles[i] = tcp_max - 1 - i;
    nfree_handles = tcp_max;
    st.max_conns = (uint32_t)tcp_max;
    char v[16];
    cc_mode = CC_AUTO;
    if (cmdline_get("tcp_cc", v, sizeof v) >= 0)
        cc_mode = !strcmp(v, "model") ? CC_MODEL : !strcmp(v, "loss") ? CC_LOSS : CC_AUTO;
    tcp_rekey();
}

static uint16_t next_port; /* the next ephemeral port tried; 0 = not chosen yet */

void tcp_rekey(void)
{
    /* At start, and again in a clone (Irq.CLONE): a clone's ISN secret and first
     * ephemeral port must not be its snapshot's, which all its siblings share. */
    iss_secret = ((uint32_t)clock_ns() * 2654435761u ^ DENALI_VREGS->vm_id * 40503u)
                 + DENALI_VREGS->generation * 2246822519u;
    next_port = 0;
}

static uint32_t hash(uint32_t rip, uint16_t rport, uint16_t lport)
{
    uint32_t h = rip * 2654435761u ^ ((uint32_t)rport << 16 | lport);
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    return h & hmask;
}

/* RFC 6528: a clock plus a per-connection offset. */
static uint32_t new_iss(uint32_t rip, uint16_t rport, uint16_t lport)
{
    uint32_t h = (rip ^ iss_secret) * 2654435761u + ((uint32_t)rport << 16 | lport) * 40503u;
    return (uint32_t)(now_ns() >> 12) + (h ^ h >> 16);
}

/* ---- rings indexed by sequence number ---- */

static void ring_write(uint8_t *ring, uint32_t size, uint32_t pos, const uint8_t *src, uint32_t n)
{
    pos &= size - 1;
    uint32_t first = umin(n, size - pos);
    memcpy(ring + pos, src, first);
    memcpy(ring, src + first, n - first);
}

static void ring_read(const uint8_t *ring, uint32_t size, uint32_t pos, uint8_t *dst, uint32_t n)
{
    pos &= size - 1;
    uint32_t first = umin(n, size - pos);
    memcpy(dst, ring + pos, first);
    memcpy(dst + first, ring, n - first);
}

/* Copies n bytes out of a ring with their checksum: the sum of the piece as if it began at
 * an even offset of the segment's payload. */
static uint32_t ring_csum_read(const uint8_t *ring, uint32_t size, uint32_t pos, uint8_t *dst, uint32_t n)
{
    pos &= size - 1;
    uint32_t first = umin(n, size - pos);
    uint32_t s = csum_copy(dst, ring + pos, first, 0);
    if (n > first)
        s = csum_combine(s, csum_shift(csum_copy(dst + first, ring, n - first, 0), first));
    return s;
}

/* Moves a ring's bytes for [from, from + n) (offsets as sequence numbers) to a new ring. */
static void ring_move(uint8_t *dst, uint32_t dsize, const uint8_t *src, uint32_t ssize, uint32_t from, uint32_t n)
{
    while (n) {
        uint32_t sp = from & (ssize - 1), dp = from & (dsize - 1);
        uint32_t k = umin(n, umin(ssize - sp, dsize - dp));
        memcpy(dst + dp, src + sp, k);
        from += k;
        n -= k;
    }
}

/* The largest receive ring: 64 KiB, or TCP_BUF_MAX when our window is scaled. */
static uint32_t rcv_max(const struct tcb *t)
{
    return t->rcv_shift ? TCP_BUF_MAX : 65536;
}

/* The sequence number of the first unread byte (the peer's FIN, once in, took one). */
static uint32_t rd_seq(const struct tcb *t)
{
    return t->rcv_nxt - t->fin_rcvd - t->rlen;
}

static uint32_t roundup_pow2(uint32_t n)
{
    uint32_t p = BUF_MIN;
    while (p < n && p < TCP_BUF_MAX)
        p *= 2;
    return p;
}

/* The send ring holds at least want more bytes (up to TCP_BUF_MAX); 0 if no memory. */
static int sbuf_reserve(struct tcb *t, uint32_t want)
{
    if (t->sbuf && t->ssize - t->slen >= want)
        return 1;
    if (t->sbuf && t->ssize >= TCP_BUF_MAX)
        return t->ssize > t->slen;
    uint32_t size = roundup_pow2(t->slen + want);
    if (t->sbuf && size <= t->ssize)
        return t->ssize > t->slen;
    uint8_t *b = malloc(size);
    if (!b)
        return t->sbuf && t->ssize > t->slen;
    if (t->sbuf) {
        ring_move(b, size, t->sbuf, t->ssize, t->snd_una - t->iss - 1, t->slen);
        free(t->sbuf);
    }
    t->sbuf = b;
    t->ssize = size;
    return 1;
}

/* The receive ring: allocated at the first data, doubled while the application lags or
 * the peer is window-limited. */
static int rbuf_grow(struct tcb *t, uint32_t size)
{
    if (t->rbuf && size <= t->rsize)
        return 1;
    uint8_t *b = malloc(size);
    if (!b)
        return 0;
    if (size > st.rcv_buf_peak)
        st.rcv_buf_peak = size;
    if (t->rbuf) {
        uint32_t start = rd_seq(t), n = t->rlen;
        if (t->nooo)
            n = t->ooo[t->nooo - 1][1] - start;
        ring_move(b, size, t->rbuf, t->rsize, start - t->irs - 1, n);
        free(t->rbuf);
    }
    t->rbuf = b;
    t->rsize = size;
    return 1;
}

static void free_buffers(struct tcb *t)
{
    free(t->sbuf);
    free(t->rbuf);
    t->sbuf = t->rbuf = 0;
    t->ssize = t->slen = t->rlen = 0;
    t->nooo = t->nsacked = 0;
}

/* ---- timers ---- */

/* The deadline heap: the earliest deadline at theap[0], O(log n) to add, move or take
 * out a connection, so a table full of retrying connections costs the timer pass only
 * the ones that are due (a list scan once cost every connection on every expiry). */
static void heap_set(uint32_t i, struct tcb *t)
{
    theap[i] = t;
    t->hpos = i;
}

static void heap_up(uint32_t i)
{
    struct tcb *t = theap[i];
    while (i) {
        uint32_t up = (i - 1) / 2;
        if (theap[up]->deadline <= t->deadline)
            break;
        heap_set(i, theap[up]);
        i = up;
    }
    heap_set(i, t);
}

static void heap_down(uint32_t i)
{
    struct tcb *t = theap[i];
    for (;;) {
        uint32_t c = 2 * i + 1;
        if (c >= theap_n)
            break;
        if (c + 1 < theap_n && theap[c + 1]->deadline < theap[c]->deadline)
            c++;
        if (theap[c]->deadline >= t->deadline)
            break;
        heap_set(i, theap[c]);
        i = c;
    }
    heap_set(i, t);
}

static void timer_update(struct tcb *t)
{
    uint64_t d = t->rto_deadline;
    if (t->misc_deadline && (!d || t->misc_deadline < d))
        d = t->misc_deadline;
    t->deadline = d;
    if (t->state == T_TIME_WAIT) { /* the TIME-WAIT FIFO keeps its time */
        if (d && (!tcp_next || d < tcp_next)) {
            tcp_next = d;
            net_timer_changed(d);
        }
        d = 0;
    }
    if (d && !t->in_timers) {
        heap_set(theap_n++, t);
        t->in_timers = 1;
        heap_up(t->hpos);
    } else if (d && t->in_timers) {
        heap_up(t->hpos);
        heap_down(t->hpos);
    } else if (!d && t->in_timers) {
        uint32_t i = t->hpos;
        struct tcb *last = theap[--theap_n];
        t->in_timers = 0;
        if (i < theap_n) {
            heap_set(i, last);
            heap_up(i);
            heap_down(last->hpos);
        }
    }
    if (d && (!tcp_next || d < tcp_next)) {
        tcp_next = d;
        net_timer_changed(d);
    }
}

/* The retransmission timer and RTT samples read the exact clock (a trap): the vregs time
 * is as of the slice's start, and a busy VM's slice may be older than a short RTO. */
static void arm_rto(struct tcb *t)
{
    /* a tail loss probe first (RFC 8985 7.2: PTO = 2 SRTT, more when one segment is out,
     * for a delayed ACK), when the RTT is known and no recovery or probe is under way */
    uint64_t wait = t->rto;
    t->tlp_armed = 0;
    if (t->srtt && !t->in_recovery && !t->tlp_sent && t->state >= T_ESTAB && t->state != T_TIME_WAIT) {
        uint64_t pto = 2 * t->srtt + (t->snd_max - t->snd_una <= t->mss ? 10000000ull : 0);
        if (pto < 2000000ull)
            pto = 2000000ull;
        if (pto < wait) {
            wait = pto;
            t->tlp_armed = 1;
        }
    }
    t->rto_deadline = clock_ns() + wait;
    timer_update(t);
}

static void disarm_rto(struct tcb *t)
{
    t->rto_deadline = 0;
    timer_update(t);
}

/* ---- allocation and lookup ---- */

static void unhash(struct tcb *t)
{
    if (!t->hashed)
        return;
    struct tcb **pp = t->state == T_LISTEN || t->lclosed ? &listeners : &htab[hash(t->rip, t->rport, t->lport)];
    for (; *pp; pp = &(*pp)->hnext) {
        if (*pp == t) {
            *pp = t->hnext;
            break;
        }
    }
    t->hashed = 0;
}

static void rehash(struct tcb *t)
{
    uint32_t h = hash(t->rip, t->rport, t->lport);
    t->hnext = htab[h];
    htab[h] = t;
    t->hashed = 1;
}

/* TIME-WAIT connections sit in a FIFO ordered by expiry (they all wait TIME_WAIT_NS),
 * not on the timer list: a busy server has thousands, and only the oldest can expire. */
static void tw_remove(struct tcb *t)
{
    if (t->twprev)
        t->twprev->anext = t->anext;
    else if (tw_head == t)
        tw_head = t->anext;
    else
        return; /* not listed */
    if (t->anext)
        t->anext->twprev = t->twprev;
    else
        tw_tail = t->twprev;
    t->anext = t->twprev = 0;
    st.time_wait--;
}

static void tw_append(struct tcb *t)
{
    t->anext = 0;
    t->twprev = tw_tail;
    if (tw_tail)
        tw_tail->anext = t;
    else
        tw_head = t;
    tw_tail = t;
    st.time_wait++;
}

/* Half-open connections, oldest first: when a SYN finds the table or its listener's
 * backlog full, the oldest half-open connection makes room (RFC 4987 4.4's "drop
 * oldest" SYN cache rule), so a SYN flood cannot lock real clients out. */
static void syn_append(struct tcb *t)
{
    t->synnext = 0;
    t->synprev = syn_tail;
    if (syn_tail)
        syn_tail->synnext = t;
    else
        syn_head = t;
    syn_tail = t;
    t->in_syn = 1;
}

static void syn_remove(struct tcb *t)
{
    if (!t->in_syn)
        return;
    if (t->synprev)
        t->synprev->synnext = t->synnext;
    else
        syn_head = t->synnext;
    if (t->synnext)
        t->synnext->synprev = t->synprev;
    else
        syn_tail = t->synprev;
    t->synnext = t->synprev = 0;
    t->in_syn = 0;
}

static void queue_remove(struct tcb *l, struct tcb *t)
{
    struct tcb **pp = &l->aq_head, *prev = 0;
    for (; *pp; prev = *pp, pp = &(*pp)->anext) {
        if (*pp == t) {
            *pp = t->anext;
            if (l->aq_tail == t)
                l->aq_tail = prev;
            t->anext = 0;
            t->queued = 0;
            return;
        }
    }
}

static void release_listener(struct tcb *l);

/* Frees a connection entirely: its table entry, buffers, handle and memory. */
static void free_tcb(struct tcb *t)
{
    unhash(t);
    t->rto_deadline = t->misc_deadline = 0;
    timer_update(t);
    if (t->ack_pending) {
        for (struct tcb **pp = &ack_list; *pp; pp = &(*pp)->acknext) {
            if (*pp == t) {
                *pp = t->acknext;
                break;
            }
        }
    }
    if (t->state == T_TIME_WAIT)
        tw_remove(t);
    syn_remove(t);
    struct tcb *l = t->parent;
    if (l) {
        if (t->queued)
            queue_remove(l, t);
        l->pending--;
        t->parent = 0;
        if (l->lclosed)
            release_listener(l);
    }
    free_buffers(t);
    handles[t->handle] = 0;
    free_handles[nfree_handles++] = t->handle;
    st.conns--;
    t->state = T_FREE;
    free(t);
}

static void release_listener(struct tcb *l)
{
    if (l->lclosed && !l->pending)
        free_tcb(l);
}

static struct tcb *alloc_tcb(void)
{
    if (!nfree_handles && tw_head) { /* full: the oldest TIME-WAIT connection makes room */
        st.time_wait_reclaimed++;
        free_tcb(tw_head);
    }
    if (!nfree_handles)
        return 0;
    struct tcb *t = calloc(1, sizeof *t);
    if (!t)
        return 0;
    t->handle = free_handles[--nfree_handles];
    handles[t->handle] = t;
    t->state = T_CLOSED;
    t->rto = RTO_INIT;
    t->mss = 536;
    t->cwnd = IW_SEGS * MSS;
    t->ssthresh = 0xffffffffu;
    t->rsize = BUF_MIN;
    if (++st.conns > st.conns_peak)
        st.conns_peak = st.conns;
    return t;
}

static void init_iss(struct tcb *t, uint32_t iss)
{
    t->iss = iss;
    t->snd_una = t->snd_nxt = t->snd_max = t->recover = t->high_rxt = iss;
}

static struct tcb *find(uint32_t src, uint16_t sport, uint16_t dport, struct tcb **listener)
{
    *listener = 0;
    for (struct tcb *l = listeners; l; l = l->hnext)
        if (l->lport == dport && l->state == T_LISTEN)
            *listener = l;
    for (struct tcb *t = htab[hash(src, sport, dport)]; t; t = t->hnext)
        if (t->rip == src && t->rport == sport && t->lport == dport)
            return t;
    return 0;
}

/* ---- output ---- */

static uint32_t rcv_window(struct tcb *t)
{
    /* the right edge moves right only (never shrinks), in steps of at least an MSS or half
     * the buffer (receiver silly-window avoidance, RFC 9293 3.8.6.2.2) */
    uint32_t wmax = 65535u << t->rcv_shift;
    uint32_t edge = rd_seq(t) + umin(t->rsize, wmax);
    uint32_t step = umin(t->rsize / 2, MSS);
    if (SEQ_GT(edge, t->rcv_adv) && (edge - t->rcv_adv >= step || t->rlen == 0))
        t->rcv_adv = edge;
    if (SEQ_LT(t->rcv_adv, t->rcv_nxt))
        t->rcv_adv = t->rcv_nxt;
    return umin(t->rcv_adv - t->rcv_nxt, wmax);
}

/* Receive-window tuning, after in-order data: once per round trip (the connection's
 * smoothed RTT; the handshake gives the first; timed at slice granularity), the bytes
 * that arrived in it. A peer
 * that delivered more than half the ring in one round trip is held back by the window
 * (the window is the most it may have in flight): the ring should hold twice that.
 * Returns the size it should have (a power of two), or 0. */
static uint32_t rcv_tune(struct tcb *t)
{
    uint64_t now = now_ns(); /* the slice's time: no CLOCK hypercall per segment */
    if (!t->srtt)
        return 0;
    if (!t->rcvq_start) {
        t->rcvq_start = now;
        t->rcvq_seq = t->rcv_nxt;
        return 0;
    }
    if (now - t->rcvq_start < t->srtt)
        return 0;
    uint32_t got = t->rcv_nxt - t->rcvq_seq;
    t->rcvq_start = now;
    t->rcvq_seq = t->rcv_nxt;
    return got > t->rsize / 2 ? roundup_pow2(2 * got) : 0;
}

/* Builds the header in p; returns its length. SYNs carry MSS and SACK-permitted; ACKs
 * carry SACK blocks while out-of-order data is held. */
static size_t build_header(struct tcb *t, uint8_t *p, uint8_t flags, uint32_t seq, uint32_t len)
{
    size_t hlen = 20;
    put16(p, t->lport);
    put16(p + 2, t->rport);
    put32(p + 4, seq);
    put32(p + 8, (flags & F_ACK) ? t->rcv_nxt : 0);
    p[13] = flags;
    uint32_t w = rcv_window(t);
    put16(p + 14, (uint16_t)((flags & F_SYN) ? umin(w, 65535) : w >> t->rcv_shift));
    put16(p + 16, 0);
    put16(p + 18, 0);
    if (flags & F_SYN) {
        p[20] = 2;
        p[21] = 4;
        put16(p + 22, MSS);
        p[24] = 1;
        p[25] = 1;
        p[26] = 4; /* SACK permitted */
        p[27] = 2;
        hlen = 28;
        if (!(flags & F_ACK) || t->ws_ok) { /* window scale: in a SYN-ACK only if offered */
            p[28] = 1;
            p[29] = 3;
            p[30] = 3;
            p[31] = WS_SHIFT;
            hlen = 32;
        }
    } else if (t->sack_ok && t->nooo && (flags & F_ACK) && len + 20 + 12 <= MSS + 20) {
        /* SACK blocks ride only where they fit beside the data (at least one block) */
        uint8_t *o = p + 20;
        int n = t->nooo < 4 ? t->nooo : 4;
        while (n > 1 && len + 20 + 4 + 8 * (uint32_t)n > MSS + 20)
            n--;
        o[0] = 1;
        o[1] = 1;
        o[2] = 5;
        o[3] = (uint8_t)(2 + 8 * n);
        o += 4;
        /* RFC 2018 4: the block with the most recent segment first, then the others */
        int first = t->ooo_last < t->nooo ? t->ooo_last : 0;
        put32(o, t->ooo[first][0]);
        put32(o + 4, t->ooo[first][1]);
        o += 8;
        for (int i = 0, k = 1; i < t->nooo && k < n; i++) {
            if (i == first)
                continue;
            put32(o, t->ooo[i][0]);
            put32(o + 4, t->ooo[i][1]);
            o += 8;
            k++;
        }
        hlen = (size_t)(o - p);
    }
    p[12] = (uint8_t)((hlen / 4) << 4);
    return hlen;
}

/* Sends one segment with len bytes of data from the send ring at seq. */
static void send_seg(struct tcb *t, uint8_t flags, uint32_t seq, uint32_t len)
{
    uint8_t *p = ip_tx_begin(t->rip);
    int direct = p != 0;
    if (!direct)
        p = seg;
    size_t hlen = build_header(t, p, flags, seq, len);
    uint32_t sum = 0;
    if (len)
        sum = csum_shift(ring_csum_read(t->sbuf, t->ssize, seq - t->iss - 1, p + hlen, len), hlen);
    sum = csum_combine(sum, csum_add(p, hlen, csum_pseudo(net_addr, t->rip, 6, hlen + len)));
    put16(p + 16, csum_finish(sum));
    if (direct)
        ip_tx_commit(p, 6, hlen + len);
    else
        ip_output(t->rip, 6, p, hlen + len);
    if (flags & F_ACK)
        t->ack_pending = t->ack_pending ? 2 : 0; /* 2: still listed, but satisfied */
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
    put16(p + 16, csum_finish(csum_add(p, 20, csum_pseudo(net_addr, dst, 6, 20))));
    ip_output(dst, 6, p, 20);
}

static void send_ack(struct tcb *t)
{
    send_seg(t, F_ACK, t->snd_nxt, 0);
}

/* RFC 5961 7: challenge ACKs, at most CHALLENGE_PER_S a second over all connections. */
static void challenge_ack(struct tcb *t)
{
    static uint64_t window;
    static unsigned count;
    uint64_t now = now_ns();
    if (now - window > 1000000000ull) {
        window = now;
        count = 0;
    }
    if (++count > CHALLENGE_PER_S)
        return;
    st.challenge_acks++;
    send_ack(t);
}

/* The first SACKed range at or after seq, or -1. */
static int sack_at_or_after(const struct tcb *t, uint32_t seq)
{
    for (int i = 0; i < t->nsacked; i++)
        if (SEQ_GT(t->sacked[i][1], seq))
            return i;
    return -1;
}

static void send_data(struct tcb *t, uint32_t seq, uint32_t n)
{
    uint32_t end = seq + n;
    send_seg(t, F_ACK | (end == t->snd_una + t->slen ? F_PSH : 0), seq, n);
    if (SEQ_LT(seq, t->snd_max)) {
        st.retransmits++;
        if (seq == t->snd_una)
            t->una_rxt_at = clock_ns();
    }
}

/* Sends data from snd_nxt (skipping what the peer SACKed) up to the sequence limit, then
 * the FIN when it is due. */
static void send_new(struct tcb *t, uint32_t limit)
{
    uint32_t data_end = t->snd_una + t->slen;
    uint32_t mss = t->mss;
    while (SEQ_LT(t->snd_nxt, data_end) && SEQ_LT(t->snd_nxt, limit)) {
        int b = sack_at_or_after(t, t->snd_nxt);
        if (b >= 0 && SEQ_LE(t->sacked[b][0], t->snd_nxt)) {
            t->snd_nxt = t->sacked[b][1]; /* the peer has it */
            continue;
        }
        uint32_t n = umin(umin(data_end - t->snd_nxt, limit - t->snd_nxt), mss);
        if (b >= 0)
            n = umin(n, t->sacked[b][0] - t->snd_nxt);
        /* sender silly-window avoidance: no runt segment while the window, not the data,
         * is what limits it and something is still in flight */
        if (n < mss && n < data_end - t->snd_nxt && t->snd_max != t->snd_una)
            break;
        if (t->corked && n < mss && t->snd_nxt + n == data_end)
            break; /* corked: the tail waits for more data or tcp_cork(c, 0) */
        send_data(t, t->snd_nxt, n);
        if (!t->rtt_timing && SEQ_GE(t->snd_nxt, t->snd_max)) {
            t->rtt_timing = 1;
            t->rtt_seq = t->snd_nxt + n;
            t->rtt_start = clock_ns();
        }
        t->snd_nxt += n;
        if (SEQ_GT(t->snd_nxt, t->snd_max))
            t->snd_max = t->snd_nxt;
        if (!t->rto_deadline)
            arm_rto(t);
    }
    if (t->fin_queued && !t->fin_acked && t->snd_nxt == data_end &&
        (!t->fin_sent || SEQ_LT(t->snd_nxt, t->snd_max))) {
        if (!t->fin_sent) {
            t->fin_sent = 1;
            t->fin_seq = data_end;
            t->state = t->state == T_CLOSE_WAIT ? T_LAST_ACK : T_FIN_WAIT_1;
        }
        send_seg(t, F_FIN | F_ACK, t->fin_seq, 0);
        t->snd_nxt = t->fin_seq + 1;
        if (SEQ_GT(t->snd_nxt, t->snd_max))
            t->snd_max = t->snd_nxt;
        if (!t->rto_deadline)
            arm_rto(t);
    }
    if (SEQ_LT(t->snd_nxt, data_end) && !t->snd_wnd && !t->rto_deadline)
        arm_rto(t); /* zero window: the timer sends a probe */
}

/* Bytes the peer has SACKed. */
static uint32_t sacked_bytes(const struct tcb *t)
{
    uint32_t n = 0;
    for (int i = 0; i < t->nsacked; i++)
        n += t->sacked[i][1] - t->sacked[i][0];
    return n;
}

/* RFC 6675 pipe: bytes in flight, counting holes below the highest SACK as lost unless
 * retransmitted (below high_rxt). */
static uint32_t pipe_bytes(const struct tcb *t)
{
    if (!t->nsacked)
        return t->snd_max - t->snd_una;
    uint32_t high_sack = t->sacked[t->nsacked - 1][1];
    uint32_t holes = (high_sack - t->snd_una) - sacked_bytes(t);
    uint32_t rexmit_upto = SEQ_LT(t->high_rxt, high_sack) ? t->high_rxt : high_sack;
    uint32_t rexmit = 0; /* hole bytes below rexmit_upto */
    uint32_t at = t->snd_una;
    for (int i = 0; i < t->nsacked && SEQ_LT(at, rexmit_upto); i++) {
        uint32_t hole_end = SEQ_LT(t->sacked[i][0], rexmit_upto) ? t->sacked[i][0] : rexmit_upto;
        if (SEQ_GT(hole_end, at))
            rexmit += hole_end - at;
        at = t->sacked[i][1];
    }
    return (t->snd_max - t->snd_una) - sacked_bytes(t) - holes + rexmit;
}

/* The next hole to retransmit in SACK recovery: its start and length, or 0. */
static uint32_t next_hole(struct tcb *t, uint32_t *start)
{
    if (!t->nsacked)
        return 0;
    uint32_t at = SEQ_GT(t->high_rxt, t->snd_una) ? t->high_rxt : t->snd_una;
    for (int i = 0; i < t->nsacked; i++) {
        if (SEQ_LE(t->sacked[i][1], at))
            continue;
        if (SEQ_LT(at, t->sacked[i][0])) {
            *start = at;
            return umin(t->sacked[i][0] - at, t->mss);
        }
        at = t->sacked[i][1];
    }
    return 0; /* nothing below the highest SACK is missing */
}

static void output(struct tcb *t)
{
    if (t->state < T_ESTAB || t->state == T_TIME_WAIT)
        return;
    uint32_t wnd_end = t->snd_una + t->snd_wnd;
    if (t->in_recovery && t->sack_ok) {
        /* RFC 6675 5: while the pipe has room, holes first, then new data */
        for (int guard = 0; guard < 64; guard++) {
            uint32_t pipe = pipe_bytes(t);
            if (pipe + t->mss > t->cwnd)
                break;
            uint32_t start, n = next_hole(t, &start);
            if (n) {
                send_data(t, start, n);
                t->high_rxt = start + n;
                continue;
            }
            uint32_t before = t->snd_nxt;
            send_new(t, SEQ_LT(t->snd_nxt + t->mss, wnd_end) ? t->snd_nxt + t->mss : wnd_end);
            if (t->snd_nxt == before)
                break;
        }
        /* if the resent first hole is not acknowledged within about an RTT while the
         * ACKs stop, resend it again then (RACK's reordering window, RFC 8985 6.2),
         * before the RTO would collapse the window */
        if (t->una_rxt_at && t->srtt) {
            uint64_t when = t->una_rxt_at + t->srtt + t->srtt / 4 + 2000000;
            if (!t->rto_deadline || when < t->rto_deadline) {
                t->rto_deadline = when;
                t->tlp_armed = 2;
                timer_update(t);
            }
        }
        return;
    }
    uint32_t cw = t->cwnd;
    if (!t->in_recovery && t->dupacks && t->dupacks < 3)
        cw += (uint32_t)t->dupacks * t->mss; /* limited transmit (RFC 3042) */
    uint32_t cw_end = t->snd_una + cw;
    send_new(t, SEQ_LT(cw_end, wnd_end) ? cw_end : wnd_end);
}

/* ---- input ---- */

static void wake(struct tcb *t)
{
    cond_broadcast(&t->cond);
}

/* The protocol is done with t: free it now, or when the application closes it. */
static void finish(struct tcb *t, int reset)
{
    t->reset = (uint8_t)reset;
    t->rto_deadline = t->misc_deadline = 0;
    timer_update(t);
    if (t->state == T_TIME_WAIT)
        tw_remove(t);
    syn_remove(t);
    t->state = T_CLOSED;
    unhash(t);
    free(t->sbuf);
    t->sbuf = 0;
    t->ssize = t->slen = 0;
    wake(t);
    if (t->app_closed || (t->parent && !t->accepted))
        free_tcb(t);
}

static void enter_time_wait(struct tcb *t)
{
    t->state = T_TIME_WAIT;
    t->rto_deadline = 0;
    t->misc_deadline = now_ns() + TIME_WAIT_NS;
    timer_update(t);
    free_buffers(t); /* nothing more to send or deliver (the app saw the FIN) */
    tw_append(t);
    wake(t);
}

static int use_model(const struct tcb *t);

static void update_rtt(struct tcb *t, uint32_t ack)
{
    if (!t->rtt_timing || SEQ_LT(ack, t->rtt_seq))
        return;
    t->rtt_timing = 0;
    uint64_t r = clock_ns() - t->rtt_start;
    t->last_rtt = r;
    if (!t->min_rtt || r < t->min_rtt)
        t->min_rtt = r;
    /* the model's startup ends as a queue starts to build (the RTT an eighth, at least
     * STARTUP_QUEUE_NS, above the minimum: HyStart's delay rule), before it overflows a
     * short one: the window is then the model's two bandwidth-delay products */
    if (use_model(t) && !t->pipe_full && r > t->min_rtt + umax64(t->min_rtt / 8, STARTUP_QUEUE_NS)) {
        t->pipe_full = 1;
        st.startup_delay_exits++;
    }
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

/* Merges a SACK block from the peer into the scoreboard (kept sorted, disjoint). */
static void sack_add(struct tcb *t, uint32_t a, uint32_t b)
{
    if (!SEQ_LT(a, b) || SEQ_LE(b, t->snd_una) || SEQ_GT(b, t->snd_max))
        return;
    if (SEQ_LT(a, t->snd_una))
        a = t->snd_una;
    uint32_t (*s)[2] = t->sacked;
    int n = t->nsacked, i = 0;
    while (i < n && SEQ_LT(s[i][1], a))
        i++;
    int j = i;
    while (j < n && SEQ_LE(s[j][0], b)) { /* overlapping or touching: absorb */
        if (SEQ_LT(s[j][0], a))
            a = s[j][0];
        if (SEQ_GT(s[j][1], b))
            b = s[j][1];
        j++;
    }
    if (j == i && n == SB_MAX) { /* full: keep the lowest ranges, they matter first */
        if (i == n)
            return;
        n--;
    }
    memmove(&s[i + 1], &s[j], (size_t)(n - j) * sizeof s[0]);
    s[i][0] = a;
    s[i][1] = b;
    t->nsacked = n - (j - i) + 1;
}

static void sack_trim(struct tcb *t)
{
    int k = 0;
    for (int i = 0; i < t->nsacked; i++) {
        if (SEQ_LE(t->sacked[i][1], t->snd_una))
            continue;
        t->sacked[k][0] = SEQ_LT(t->sacked[i][0], t->snd_una) ? t->snd_una : t->sacked[i][0];
        t->sacked[k][1] = t->sacked[i][1];
        k++;
    }
    t->nsacked = k;
}

/* Resends the segment at snd_una (up to the next SACKed range). */
static void resend_una(struct tcb *t)
{
    uint32_t n = umin(t->mss, t->slen);
    int b = sack_at_or_after(t, t->snd_una);
    if (b >= 0 && SEQ_GT(t->sacked[b][0], t->snd_una))
        n = umin(n, t->sacked[b][0] - t->snd_una);
    if (n) {
        send_data(t, t->snd_una, n);
        if (SEQ_LT(t->high_rxt, t->snd_una + n))
            t->high_rxt = t->snd_una + n; /* not again from next_hole in the same pass */
    }
}

/* Duplicate ACKs that start fast retransmit: 3, or fewer when fewer than four segments
 * are out and no new data can follow (early retransmit, RFC 5827). */
static int dup_thresh(const struct tcb *t)
{
    uint32_t out = (t->snd_max - t->snd_una + t->mss - 1) / t->mss;
    int unsent = SEQ_LT(t->snd_nxt, t->snd_una + t->slen) && SEQ_LT(t->snd_nxt, t->snd_una + t->snd_wnd);
    if (out >= 4 || unsent)
        return 3;
    return out > 2 ? (int)out - 1 : 1;
}

/* Which window a connection follows. Without SACK, the loss-based one. tcp_cc=loss: always
 * the loss-based one; tcp_cc=model: always the model's. tcp_cc=auto (the default): the
 * model's until a loss comes with a queue (see classify_loss), the loss-based one from
 * then until a loss comes without one. */
static int use_model(const struct tcb *t)
{
    if (!t->sack_ok || cc_mode == CC_LOSS)
        return 0;
    return cc_mode == CC_MODEL || !t->congested;
}

/* At a loss (recovery or timeout), tcp_cc=auto decides what it means: both the latest
 * RTT sample and the smoothed RTT above the minimum by a quarter of it (at least
 * QUEUE_MIN_NS) say a queue has built up on the path, so the loss is congestion (a full
 * queue, other flows' or ours): the connection backs off as loss-based flows do and
 * competes fairly with them. An RTT near the minimum says the loss is random (a lossy
 * link, no queue): the window stays the model's, and the loss costs its retransmission
 * only. Both samples must agree, so one late sample (a host busy for a moment) does not
 * make random loss look like congestion, nor one early sample the reverse. */
static void classify_loss(struct tcb *t)
{
    if (cc_mode != CC_AUTO || !t->min_rtt)
        return;
    uint64_t q = t->min_rtt / 4 > QUEUE_MIN_NS ? t->min_rtt / 4 : QUEUE_MIN_NS;
    uint64_t bound = t->min_rtt + q;
    t->congested = t->last_rtt > bound && t->srtt > bound;
    if (t->congested)
        st.cc_congested++;
    else
        st.cc_random++;
}

/* The model-based congestion control (connections with SACK; see use_model): the window
 * follows a model of the path, not the losses, as BBR does (draft-ietf-ccwg-bbr): the
 * bandwidth is the highest delivery rate of the last BW_ROUNDS round trips, the
 * round-trip time the lowest sample; the window starts like slow start, leaves it
 * when three rounds in a row deliver less than 25% more than the best before, and is
 * then twice the bandwidth-delay product. A loss is repaired (SACK recovery, RACK-style
 * resends, the RTO as ever) but does not shrink the window: random loss on a long path
 * costs the retransmissions only. Without pacing, and without BBR's probing cycles: the
 * window is what bounds the sender. The default (loss-based: RFC 5681 with RFC 9438's
 * 0.7 decrease) competes fairly with other loss-based flows; the model alone
 * (tcp_cc=model) does not back off for another flow's losses, which tcp_cc=auto's
 * classify_loss makes it do. */

static uint32_t delivered(const struct tcb *t)
{
    return t->snd_una - t->iss + sacked_bytes(t);
}

static uint32_t model_bw(const struct tcb *t)
{
    uint32_t m = 0;
    for (int i = 0; i < BW_ROUNDS; i++)
        m = umax(m, t->bw[i]);
    return m;
}

/* After an ACK that delivered ``newly`` bytes (acknowledged or SACKed). */
static void model_on_ack(struct tcb *t, uint32_t newly)
{
    uint64_t now = clock_ns();
    uint32_t d = delivered(t);
    uint32_t high = t->nsacked && SEQ_GT(t->sacked[t->nsacked - 1][1], t->snd_una) ? t->sacked[t->nsacked - 1][1]
                                                                                     : t->snd_una;
    if (!t->round_start) {
        t->round_start = now;
        t->round_delivered = d;
        t->round_end = t->snd_max;
    } else if (SEQ_GE(high, t->round_end) && now - t->round_start >= 1000000ull) {
        /* a round trip is over: what it delivered, per ms */
        uint64_t rate = (uint64_t)(d - t->round_delivered) * 1000000ull / (now - t->round_start);
        t->bw[t->bw_i] = rate > 0xffffffffu ? 0xffffffffu : (uint32_t)rate;
        t->bw_i = (uint8_t)((t->bw_i + 1) % BW_ROUNDS);
        if (!t->pipe_full) {
            uint32_t best = model_bw(t);
            if (best >= t->full_bw + t->full_bw / 4) {
                t->full_bw = best;
                t->full_rounds = 0;
            } else if (++t->full_rounds >= 3) {
                t->pipe_full = 1;
            }
        }
        t->round_start = now;
        t->round_delivered = d;
        t->round_end = t->snd_max;
    }
    uint64_t rtt = t->min_rtt ? t->min_rtt : t->srtt;
    uint64_t target = 2 * (uint64_t)model_bw(t) * rtt / 1000000ull;
    uint64_t cw = (uint64_t)t->cwnd + newly;
    if (t->pipe_full && cw > target)
        cw = target;
    if (cw < 4ull * t->mss)
        cw = 4ull * t->mss;
    t->cwnd = cw > 4ull * TCP_BUF_MAX ? 4 * TCP_BUF_MAX : (uint32_t)cw;
}

static void enter_recovery(struct tcb *t)
{
    uint32_t flight = t->snd_max - t->snd_una;
    t->ssthresh = umax(flight / 10 * 7, 2 * t->mss); /* beta 0.7 (RFC 9438 4.6) */
    t->recover = t->snd_max;
    t->in_recovery = 1;
    st.fast_retransmits++;
    classify_loss(t);
    if (t->sack_ok && t->nsacked) {
        st.sack_recoveries++;
        if (!use_model(t))
            t->cwnd = t->ssthresh;
        t->high_rxt = t->snd_una;
        uint32_t n = umin(t->mss, t->slen);
        int b = sack_at_or_after(t, t->snd_una);
        if (b >= 0 && SEQ_GT(t->sacked[b][0], t->snd_una))
            n = umin(n, t->sacked[b][0] - t->snd_una);
        if (n) {
            send_data(t, t->snd_una, n);
            t->high_rxt = t->snd_una + n;
        }
    } else {
        t->cwnd = t->ssthresh + 3 * t->mss;
        uint32_t n = umin(t->mss, t->slen);
        if (n)
            send_data(t, t->snd_una, n);
        else if (t->fin_sent)
            send_seg(t, F_FIN | F_ACK, t->fin_seq, 0);
    }
    t->rtt_timing = 0;
    arm_rto(t);
}

/* Processes the ACK field (RFC 9293 3.10.7.4 fifth check, RFC 5681/6582/6675); 0 to go
 * on with the segment, -1 when it was dropped. */
static int on_ack(struct tcb *t, uint32_t seq, uint32_t ack, uint32_t wnd, uint32_t dlen, uint8_t flags,
                  const uint8_t *sack, int nsack)
{
    if (SEQ_GT(ack, t->snd_max)) { /* acknowledges what we never sent */
        send_ack(t);
        return -1;
    }
    if (SEQ_LT(ack, t->snd_una - umax(t->max_wnd, 65535))) { /* RFC 5961 5.2 */
        challenge_ack(t);
        return -1;
    }
    uint32_t delivered_before = delivered(t);
    for (int i = 0; i < nsack; i++)
        sack_add(t, get32(sack + 8 * i), get32(sack + 8 * i + 4));
    uint32_t old_wnd = t->snd_wnd;
    if (SEQ_LT(t->snd_wl1, seq) || (t->snd_wl1 == seq && SEQ_LE(t->snd_wl2, ack))) {
        t->snd_wnd = wnd;
        t->snd_wl1 = seq;
        t->snd_wl2 = ack;
        if (wnd > t->max_wnd)
            t->max_wnd = wnd;
    }
    if (SEQ_GT(ack, t->snd_una)) {
        uint32_t acked = ack - t->snd_una;
        uint32_t data_acked = umin(acked, t->slen);
        t->slen -= data_acked;
        t->snd_una = ack;
        if (SEQ_LT(t->snd_nxt, ack))
            t->snd_nxt = ack;
        if (SEQ_LT(t->high_rxt, ack))
            t->high_rxt = ack;
        if (t->fin_sent && ack == t->fin_seq + 1)
            t->fin_acked = 1;
        t->retries = 0;
        update_rtt(t, ack);
        if (t->srtt) { /* progress: undo the timeout backoff (RFC 6298 5.7 allows it) */
            t->rto = t->srtt + 4 * t->rttvar;
            t->rto = t->rto < RTO_MIN ? RTO_MIN : t->rto > RTO_MAX ? RTO_MAX : t->rto;
        }
        sack_trim(t);
        t->dupacks = 0;
        t->rxt_mark = 0;
        t->tlp_sent = 0;
        t->una_rxt_at = 0;
        if (use_model(t)) {
            if (t->in_recovery && SEQ_GE(ack, t->recover))
                t->in_recovery = 0; /* the window is the model's */
            model_on_ack(t, delivered(t) - delivered_before);
        } else if (t->in_recovery) {
            if (SEQ_GE(ack, t->recover)) { /* full acknowledgment: recovery ends */
                t->in_recovery = 0;
                t->cwnd = t->ssthresh; /* RFC 6582 3.2 step 3, option 2 (bursts are paced by ACKs) */
            } else if (!t->sack_ok || !t->nsacked) { /* NewReno partial ACK */
                uint32_t n = umin(t->mss, t->slen);
                if (n)
                    send_data(t, t->snd_una, n);
                t->cwnd = t->cwnd > acked ? t->cwnd - acked : t->mss;
                if (acked >= t->mss)
                    t->cwnd += t->mss;
                arm_rto(t);
            }
        } else if (t->cwnd < t->ssthresh) {
            t->cwnd += umin(acked, 16 * t->mss); /* slow start (ACKs may be stretched) */
        } else {
            t->cwnd += umax(t->mss * t->mss / t->cwnd, 1) * umax(acked / t->mss, 1);
        }
        if (t->cwnd > 4 * TCP_BUF_MAX)
            t->cwnd = 4 * TCP_BUF_MAX;
        if (t->snd_una == t->snd_max)
            disarm_rto(t);
        else
            arm_rto(t); /* RFC 6298 5.3 */
        wake(t);
        return 0;
    }
    /* a duplicate ACK (RFC 5681 2): nothing new acknowledged, no data, same window,
     * something outstanding; with SACK, any such ACK carrying SACK blocks (RFC 6675 2:
     * the receiver's window may move as its buffer grows) */
    if (ack == t->snd_una && !dlen && !(flags & (F_SYN | F_FIN)) && (wnd == old_wnd || (t->sack_ok && nsack)) &&
        t->snd_max != t->snd_una) {
        if (t->dupacks < 255)
            t->dupacks++;
        if (use_model(t))
            model_on_ack(t, delivered(t) - delivered_before);
        if (t->in_recovery) {
            if (!t->sack_ok || !t->nsacked) {
                t->cwnd += t->mss; /* NewReno inflation */
            } else if ((uint32_t)(t->dupacks - t->rxt_mark) > t->cwnd / t->mss + 3 ||
                       (t->una_rxt_at && t->srtt && clock_ns() - t->una_rxt_at > t->srtt + t->srtt / 4 + 2000000)) {
                /* a window's worth of ACKs, or more than an RTT, and the first hole is
                 * still there while later data is SACKed: its retransmission was lost
                 * too; resend it rather than wait for the RTO (which RFC 6675 leaves
                 * this to; RFC 8985's RACK detects it by time, as here) */
                resend_una(t);
                t->rxt_mark = t->dupacks;
            }
        } else if ((t->dupacks >= dup_thresh(t) || (t->sack_ok && sacked_bytes(t) >= 3 * t->mss) ||
                    (t->tlp_sent && t->sack_ok && t->nsacked)) &&
                   (SEQ_GT(ack, t->recover) || (t->sack_ok && t->nsacked && ack == t->recover))) {
            /* RFC 6582 3.2: not again for losses of the same window. With SACK the
             * scoreboard tells the windows apart (RFC 6675 5): an ACK at the recovery
             * point with later data SACKed reports the loss of the first segment sent
             * after recovery began, a new congestion event */
            enter_recovery(t);
        }
    }
    return 0;
}

/* Stores in-window data at seq (in order or not) and advances rcv_nxt over what became
 * contiguous. Returns 1 if anything new was stored, 0 if not, -1 when there is no
 * receive buffer and no memory for one. */
static int store(struct tcb *t, uint32_t seq, const uint8_t *data, uint32_t len)
{
    if (SEQ_LT(seq, t->rcv_nxt)) { /* trim what we have */
        uint32_t dup = t->rcv_nxt - seq;
        if (dup >= len)
            return 0;
        seq += dup;
        data += dup;
        len -= dup;
    }
    uint32_t right = rd_seq(t) + rcv_max(t);
    if (SEQ_GT(seq + len, right)) {
        if (SEQ_GE(seq, right))
            return 0;
        len = right - seq;
    }
    uint32_t need = (seq + len) - rd_seq(t);
    if (!t->rbuf || need > t->rsize) {
        uint32_t size = roundup_pow2(need);
        if (t->rbuf && size < 2 * t->rsize && t->rsize < rcv_max(t))
            size = 2 * t->rsize;
        if (!rbuf_grow(t, size > rcv_max(t) ? rcv_max(t) : size)) {
            if (!t->rbuf)
                return -1; /* no memory for any receive buffer */
            if (need > t->rsize && SEQ_GE(seq, rd_seq(t) + t->rsize))
                return 0;
        }
        if (need > t->rsize)
            len = t->rsize - ((seq) - rd_seq(t));
    }
    ring_write(t->rbuf, t->rsize, seq - t->irs - 1, data, len);
    if (seq == t->rcv_nxt) {
        t->rcv_nxt += len;
        t->rlen += len;
        /* absorb out-of-order ranges that are now contiguous */
        int k = 0;
        for (int i = 0; i < t->nooo; i++) {
            if (SEQ_LE(t->ooo[i][0], t->rcv_nxt)) {
                if (SEQ_GT(t->ooo[i][1], t->rcv_nxt)) {
                    t->rlen += t->ooo[i][1] - t->rcv_nxt;
                    t->rcv_nxt = t->ooo[i][1];
                }
                continue;
            }
            t->ooo[k][0] = t->ooo[i][0];
            t->ooo[k][1] = t->ooo[i][1];
            k++;
        }
        t->nooo = k;
        t->ooo_last = 0;
        return 1;
    }
    /* out of order: merge [seq, seq + len) into the sorted ranges */
    st.ooo_segments++;
    uint32_t a = seq, b = seq + len;
    int i = 0, n = t->nooo;
    while (i < n && SEQ_LT(t->ooo[i][1], a))
        i++;
    int j = i;
    while (j < n && SEQ_LE(t->ooo[j][0], b)) {
        if (SEQ_LT(t->ooo[j][0], a))
            a = t->ooo[j][0];
        if (SEQ_GT(t->ooo[j][1], b))
            b = t->ooo[j][1];
        j++;
    }
    if (j == i && n == OOO_MAX)
        return 0; /* no range left to describe it: drop (the peer resends) */
    memmove(&t->ooo[i + 1], &t->ooo[j], (size_t)(n - j) * sizeof t->ooo[0]);
    t->ooo[i][0] = a;
    t->ooo[i][1] = b;
    t->nooo = n - (j - i) + 1;
    t->ooo_last = i;
    return 1;
}

static void ack_later(struct tcb *t)
{
    if (t->ack_pending == 1)
        return;
    if (!t->ack_pending) {
        t->acknext = ack_list;
        ack_list = t;
    }
    t->ack_pending = 1;
}

void tcp_flush_acks(void)
{
    while (ack_list) {
        struct tcb *t = ack_list;
        ack_list = t->acknext;
        int owed = t->ack_pending == 1;
        t->ack_pending = 0;
        if (owed && t->state >= T_ESTAB)
            send_ack(t);
    }
}

/* Our FIN, or the peer's, moved the state on. */
static void on_fin(struct tcb *t)
{
    t->fin_rcvd = 1;
    t->rcv_nxt++;
    if (t->state == T_ESTAB) {
        t->state = T_CLOSE_WAIT;
    } else if (t->state == T_FIN_WAIT_1) {
        t->state = t->fin_acked ? T_TIME_WAIT : T_CLOSING;
    } else if (t->state == T_FIN_WAIT_2) {
        t->state = T_TIME_WAIT;
    }
    wake(t);
}

static void new_connection(struct tcb *l, uint32_t src, uint16_t sport, uint16_t dport, uint32_t seq,
                           uint16_t wnd, uint16_t mss, int sack_ok, int ws, uint32_t min_iss)
{
    if (l->pending >= l->backlog || (!nfree_handles && !tw_head)) {
        struct tcb *old = syn_head; /* the oldest half-open connection (of l, when l is full) */
        while (old && l->pending >= l->backlog && old->parent != l)
            old = old->synnext;
        if (old) {
            st.syn_evicted++;
            free_tcb(old);
        }
    }
    struct tcb *t = l->pending < l->backlog ? alloc_tcb() : 0;
    if (!t) {
        st.refused++;
        send_rst(src, dport, sport, 0, seq + 1, 1); /* a defined answer, never silence */
        return;
    }
    st.passive_opens++;
    t->state = T_SYN_RCVD;
    syn_append(t);
    t->parent = l;
    l->pending++;
    t->rip = src;
    t->lport = dport;
    t->rport = sport;
    t->mss = mss < MSS ? mss : MSS;
    t->sack_ok = (uint8_t)sack_ok;
    if (ws >= 0) { /* RFC 7323 2.2: both sides offered window scaling */
        t->ws_ok = 1;
        t->snd_shift = (uint8_t)(ws > 14 ? 14 : ws);
        t->rcv_shift = WS_SHIFT;
    }
    t->irs = seq;
    t->rcv_nxt = seq + 1;
    t->rcv_adv = t->rcv_nxt;
    t->snd_wnd = wnd;
    t->snd_wl1 = seq;
    uint32_t iss = new_iss(src, sport, dport);
    if (min_iss && SEQ_LT(iss, min_iss))
        iss = min_iss;
    init_iss(t, iss);
    t->snd_wl2 = iss;
    rehash(t);
    send_seg(t, F_SYN | F_ACK, t->iss, 0);
    t->snd_nxt = t->snd_max = t->iss + 1;
    t->rtt_timing = 1; /* the handshake gives the first RTT sample */
    t->rtt_seq = t->snd_nxt;
    t->rtt_start = clock_ns();
    arm_rto(t);
}

void tcp_input(uint32_t src, uint32_t dst, const uint8_t *p, size_t len)
{
    if (len < 20) {
        st.bad_segments++;
        return;
    }
    size_t hlen = (size_t)(p[12] >> 4) * 4;
    if (hlen < 20 || hlen > len) {
        st.bad_segments++;
        return;
    }
    uint16_t sport = get16(p), dport = get16(p + 2);
    struct tcb *l;
    struct tcb *t = tcp_max ? find(src, sport, dport, &l) : 0;
    if (!tcp_max)
        l = 0;
    uint32_t seq = get32(p + 4);
    uint32_t dlen = (uint32_t)(len - hlen);
    const uint8_t *data = p + hlen;
    uint32_t sum = csum_add(p, hlen, csum_pseudo(src, dst, 6, len));
    /* the fast path: in-order data for an established connection with room and nothing
     * out of order: the checksum is computed while the data is copied into the ring */
    int stored = 0;
    if (t && t->state >= T_ESTAB && t->state <= T_FIN_WAIT_2 && dlen && seq == t->rcv_nxt && !t->nooo &&
        t->rbuf && t->rsize - t->rlen >= dlen && !(p[13] & (F_SYN | F_RST))) {
        uint32_t pos = (seq - t->irs - 1) & (t->rsize - 1);
        uint32_t first = umin(dlen, t->rsize - pos);
        uint32_t ds = csum_copy(t->rbuf + pos, data, first, 0);
        if (dlen > first)
            ds = csum_combine(ds, csum_shift(csum_copy(t->rbuf, data + first, dlen - first, 0), first));
        sum = csum_combine(sum, csum_shift(ds, hlen));
        stored = 1;
    } else {
        sum = csum_combine(sum, csum_shift(csum_add(data, dlen, 0), hlen));
    }
    if (csum_finish(sum) != 0) {
        st.bad_segments++;
        net_stats.rx_bad++;
        return; /* a stored copy was never committed */
    }
    uint16_t wnd = get16(p + 14);
    uint32_t ack = get32(p + 8);
    uint8_t flags = p[13];
    uint16_t mss = 536;
    int sack_ok = 0, nsack = 0, ws = -1;
    const uint8_t *sack = 0;
    for (size_t o = 20; o < hlen;) {
        uint8_t kind = p[o];
        if (kind == 0)
            break;
        if (kind == 1) {
            o++;
            continue;
        }
        if (o + 1 >= hlen)
            break;
        uint8_t olen = p[o + 1];
        if (olen < 2 || o + olen > hlen)
            break;
        if (kind == 2 && olen == 4)
            mss = get16(p + o + 2);
        else if (kind == 4 && olen == 2)
            sack_ok = 1;
        else if (kind == 3 && olen == 3)
            ws = p[o + 2];
        else if (kind == 5 && olen >= 10 && (olen - 2) % 8 == 0) {
            sack = p + o + 2;
            nsack = (olen - 2) / 8;
        }
        o += olen;
    }
    if (mss < 64)
        mss = 64;

    if (t && t->state == T_TIME_WAIT && (flags & (F_SYN | F_ACK | F_RST)) == F_SYN && l) {
        /* RFC 9293 3.6.1 / RFC 6191: a new incarnation may reopen a TIME-WAIT connection
         * if its SYN is beyond everything of the old one; the new ISS is larger too */
        if (SEQ_GT(seq, t->rcv_nxt)) {
            uint32_t min_iss = t->snd_max + 128000;
            st.time_wait_reused++;
            free_tcb(t);
            new_connection(l, src, sport, dport, seq, wnd, mss, sack_ok, ws, min_iss);
        } else {
            send_ack(t); /* an old duplicate: TIME-WAIT answers it with an ACK */
        }
        return;
    }
    if (!t) {
        if (l) { /* RFC 9293 3.10.7.2: LISTEN */
            if (flags & F_RST)
                return;
            if (flags & F_ACK) {
                send_rst(src, dport, sport, ack, 0, 0);
                return;
            }
            if ((flags & (F_SYN | F_FIN)) == F_SYN) {
                new_connection(l, src, sport, dport, seq, wnd, mss, sack_ok, ws, 0);
                return;
            }
            st.listen_dropped++; /* FIN, NULL, Xmas, SYN+FIN: dropped */
            return;
        }
        /* CLOSED (RFC 9293 3.10.7.1): everything but a RST gets a RST */
        if (!(flags & F_RST)) {
            if (flags & F_ACK)
                send_rst(src, dport, sport, ack, 0, 0);
            else
                send_rst(src, dport, sport, 0, seq + dlen + ((flags & F_SYN) ? 1 : 0) + (flags & F_FIN), 1);
        }
        return;
    }

    if (t->state == T_SYN_SENT) {
        if ((flags & F_ACK) && (SEQ_LE(ack, t->iss) || SEQ_GT(ack, t->snd_max))) {
            if (!(flags & F_RST))
                send_rst(src, dport, sport, ack, 0, 0);
            return;
        }
        if (flags & F_RST) {
            if (flags & F_ACK)
                finish(t, 1);
            return;
        }
        if ((flags & (F_SYN | F_ACK)) == (F_SYN | F_ACK)) {
            t->irs = seq;
            t->rcv_nxt = seq + 1;
            t->rcv_adv = t->rcv_nxt;
            t->snd_una = ack;
            t->snd_wnd = t->max_wnd = wnd; /* a SYN's window is never scaled */
            t->snd_wl1 = seq;
            t->snd_wl2 = ack;
            t->mss = mss < MSS ? mss : MSS;
            t->sack_ok = (uint8_t)sack_ok;
            if (ws >= 0) {
                t->ws_ok = 1;
                t->snd_shift = (uint8_t)(ws > 14 ? 14 : ws);
                t->rcv_shift = WS_SHIFT;
            }
            t->retries = 0;
            update_rtt(t, ack);
            disarm_rto(t);
            t->state = T_ESTAB;
            send_ack(t);
            wake(t);
        }
        return;
    }

    if (t->state == T_SYN_RCVD && (flags & (F_SYN | F_ACK | F_RST)) == F_SYN && seq == t->irs) {
        send_seg(t, F_SYN | F_ACK, t->iss, 0); /* its SYN again: our SYN-ACK was lost */
        return;
    }
    /* RFC 9293 3.10.7.4 first check: is the segment acceptable? */
    uint32_t rwnd = t->rcv_adv - t->rcv_nxt;
    uint32_t seg_len = dlen + ((flags & F_SYN) ? 1 : 0) + ((flags & F_FIN) ? 1 : 0);
    int ok;
    if (!seg_len)
        ok = rwnd ? (SEQ_LE(t->rcv_nxt, seq) && SEQ_LT(seq, t->rcv_nxt + rwnd)) || seq == t->rcv_nxt
                  : seq == t->rcv_nxt;
    else
        ok = rwnd && ((SEQ_LE(t->rcv_nxt, seq) && SEQ_LT(seq, t->rcv_nxt + rwnd)) ||
                      (SEQ_LT(t->rcv_nxt, seq + seg_len) && SEQ_LE(seq + seg_len, t->rcv_nxt + rwnd)) ||
                      (SEQ_LT(seq, t->rcv_nxt) && SEQ_GT(seq + seg_len, t->rcv_nxt)));
    if (!ok && seg_len && SEQ_LE(seq, t->rcv_nxt) && SEQ_GT(seq + seg_len, t->rcv_nxt))
        ok = 1; /* overlaps rcv_nxt: its new part is usable */
    if (!ok && SEQ_GE(seq, t->rcv_nxt) && SEQ_LT(seq, rd_seq(t) + rcv_max(t)) && dlen)
        ok = 1; /* beyond the advertised edge but within what the ring can hold */
    if (!ok) {
        if (!(flags & F_RST)) {
            if (flags & F_SYN)
                challenge_ack(t);
            else
                send_ack(t);
        }
        return;
    }
    /* second check: RST (RFC 5961 3.2: only an exact match resets; else challenge) */
    if (flags & F_RST) {
        if (seq == t->rcv_nxt) {
            finish(t, 1);
        } else {
            challenge_ack(t);
        }
        return;
    }
    /* fourth check: SYN on a synchronized connection (RFC 5961 4.2: challenge ACK) */
    if (flags & F_SYN) {
        challenge_ack(t);
        return;
    }
    if (!(flags & F_ACK))
        return;
    if (t->state == T_SYN_RCVD) {
        if (SEQ_LE(ack, t->iss) || SEQ_GT(ack, t->snd_max)) {
            send_rst(src, dport, sport, ack, 0, 0);
            return;
        }
        t->snd_una = ack;
        t->snd_wnd = t->max_wnd = (uint32_t)wnd << t->snd_shift;
        t->snd_wl1 = seq;
        t->snd_wl2 = ack;
        t->state = T_ESTAB;
        syn_remove(t);
        t->retries = 0;
        update_rtt(t, ack);
        disarm_rto(t);
        struct tcb *pl = t->parent;
        if (pl && pl->lclosed) {
            send_rst(src, dport, sport, t->snd_nxt, 0, 0);
            finish(t, 1);
            return;
        }
        if (pl) { /* to the listener's accept queue */
            t->anext = 0;
            if (pl->aq_tail)
                pl->aq_tail->anext = t;
            else
                pl->aq_head = t;
            pl->aq_tail = t;
            t->queued = 1;
            wake(pl);
        }
    }
    if (on_ack(t, seq, ack, (uint32_t)wnd << t->snd_shift, dlen, flags, sack, nsack) < 0)
        return;
    if (t->state == T_FIN_WAIT_1 && t->fin_acked)
        t->state = T_FIN_WAIT_2;
    else if (t->state == T_CLOSING && t->fin_acked) {
        enter_time_wait(t);
        return;
    } else if (t->state == T_LAST_ACK && t->fin_acked) {
        finish(t, 0);
        return;
    }
    if (t->state == T_FIN_WAIT_2 && t->app_closed && !t->misc_deadline) {
        t->misc_deadline = now_ns() + ORPHAN_NS; /* nobody reads: do not wait forever */
        timer_update(t);
    }
    /* text (seventh check) */
    if (dlen && t->app_closed && t->state >= T_ESTAB && t->state <= T_FIN_WAIT_2 && !t->fin_rcvd) {
        if (SEQ_LE(seq, t->rcv_nxt) && SEQ_GT(seq + dlen, t->rcv_nxt))
            t->rcv_nxt = seq + dlen; /* nobody will read it: taken and thrown away */
        send_ack(t);
    } else if (dlen && t->state >= T_ESTAB && t->state <= T_FIN_WAIT_2 && !t->fin_rcvd) {
        int had_ooo = t->nooo;
        int in_order = seq == t->rcv_nxt;
        if (stored && in_order) {
            t->rcv_nxt += dlen;
            t->rlen += dlen;
        } else if (store(t, seq, data, dlen) < 0) {
            /* the heap is exhausted: a defined end (RST) rather than a peer left waiting */
            st.refused++;
            send_rst(t->rip, t->lport, t->rport, t->snd_nxt, 0, 0);
            finish(t, 1);
            return;
        }
        if (in_order && !had_ooo) {
            ack_later(t);
        } else {
            send_ack(t); /* out of order, or a hole filled: ACK at once (RFC 5681 4.2) */
        }
        /* the app lags, or the peer is window-limited: let the window grow (up to
         * rcv_max; a failed allocation keeps the ring as it is) */
        if (t->rsize < rcv_max(t)) {
            uint32_t want = rcv_tune(t);
            if (t->rlen > t->rsize / 2 || t->rcv_adv - t->rcv_nxt < 2 * MSS)
                want = umax(want, t->rsize * 2);
            if (want > t->rsize)
                rbuf_grow(t, umin(want, rcv_max(t)));
        }
        wake(t);
    } else if (dlen) {
        send_ack(t);
    }
    /* FIN (eighth check), in order only; one that came early waits for the data */
    if (flags & F_FIN) {
        uint32_t fseq = seq + dlen;
        if (!t->fin_rcvd) {
            if (fseq == t->rcv_nxt) {
                on_fin(t);
                send_ack(t);
                if (t->state == T_TIME_WAIT) {
                    enter_time_wait(t);
                    return;
                }
            } else {
                t->rfin_seq = fseq;
                send_ack(t);
            }
        } else if (t->state == T_TIME_WAIT) {
            send_ack(t); /* a retransmitted FIN: ACK it again, restart the wait */
            t->misc_deadline = now_ns() + TIME_WAIT_NS;
            tw_remove(t);
            tw_append(t);
            timer_update(t);
            return;
        } else {
            send_ack(t);
        }
    } else if (t->rfin_seq && !t->fin_rcvd && t->rfin_seq == t->rcv_nxt) {
        on_fin(t); /* the data before an early FIN arrived */
        send_ack(t);
        if (t->state == T_TIME_WAIT) {
            enter_time_wait(t);
            return;
        }
    }
    output(t);
}

static void on_timeout(struct tcb *t, uint64_t now)
{
    if (t->misc_deadline && t->misc_deadline <= now) {
        if (t->state != T_TIME_WAIT)
            st.orphans_timed_out++;
        finish(t, 0);
        return;
    }
    if (!t->rto_deadline || t->rto_deadline > now)
        return;
    if (t->tlp_armed == 2) { /* in recovery: the resent first hole is overdue */
        t->tlp_armed = 0;
        if (t->in_recovery && t->snd_una != t->snd_max)
            resend_una(t);
        t->rto_deadline = clock_ns() + t->rto;
        timer_update(t);
        return;
    }
    if (t->tlp_armed) { /* the probe: new data if the window allows, else the last segment */
        t->tlp_armed = 0;
        t->tlp_sent = 1;
        st.loss_probes++;
        uint32_t data_end = t->snd_una + t->slen, before = t->snd_max;
        if (SEQ_LT(t->snd_nxt, data_end) && SEQ_LT(t->snd_nxt, t->snd_una + t->snd_wnd))
            send_new(t, t->snd_nxt + t->mss);
        if (t->snd_max == before) {
            if (t->fin_sent && t->snd_max == t->fin_seq + 1 && !t->fin_acked) {
                send_seg(t, F_FIN | F_ACK, t->fin_seq, 0);
            } else {
                uint32_t end = t->fin_sent ? t->fin_seq : t->snd_max;
                uint32_t n = umin(t->mss, end - t->snd_una);
                if (n)
                    send_data(t, end - n, n);
            }
        }
        t->rto_deadline = clock_ns() + t->rto;
        timer_update(t);
        return;
    }
    int limit = t->state <= T_SYN_RCVD ? SYN_RETRIES : MAX_RETRIES;
    if (++t->retries > limit) {
        if (t->state != T_SYN_SENT)
            send_rst(t->rip, t->lport, t->rport, t->snd_nxt, 0, 0);
        st.orphans_timed_out += t->app_closed;
        finish(t, 1);
        return;
    }
    st.timeouts++;
    t->rtt_timing = 0; /* Karn: never time a retransmission */
    t->rto = t->rto * 2 > RTO_MAX ? RTO_MAX : t->rto * 2;
    if (t->state == T_SYN_SENT) {
        send_seg(t, F_SYN, t->iss, 0);
    } else if (t->state == T_SYN_RCVD) {
        send_seg(t, F_SYN | F_ACK, t->iss, 0);
    } else {
        uint32_t flight = t->snd_max - t->snd_una;
        uint32_t data_end = t->snd_una + t->slen;
        if (!flight && SEQ_LT(t->snd_nxt, data_end) && !t->snd_wnd) {
            /* zero-window probe (RFC 9293 3.8.6.1): one new byte */
            send_data(t, t->snd_nxt, 1);
            t->snd_nxt++;
            t->snd_max = t->snd_nxt;
            t->retries = 0; /* a peer that answers probes keeps the connection */
        } else {
            /* RFC 5681 3.1 (5.4 of RFC 6298): one segment, cwnd back to one */
            classify_loss(t);
            t->ssthresh = umax(flight / 2, 2 * t->mss);
            t->cwnd = t->mss;
            t->in_recovery = 0;
            t->dupacks = 0;
            t->recover = t->snd_max;
            t->snd_nxt = t->snd_una;
            t->high_rxt = t->snd_una;
            uint32_t n = umin(t->mss, t->slen);
            int b = sack_at_or_after(t, t->snd_una);
            if (b >= 0 && SEQ_GT(t->sacked[b][0], t->snd_una))
                n = umin(n, t->sacked[b][0] - t->snd_una);
            if (n) {
                send_data(t, t->snd_una, n);
                t->snd_nxt = t->snd_una + n;
            } else if (t->fin_sent && !t->fin_acked) {
                send_seg(t, F_FIN | F_ACK, t->fin_seq, 0);
                t->snd_nxt = t->fin_seq + 1;
            }
        }
    }
    t->rto_deadline = now + t->rto;
    timer_update(t);
}

uint64_t tcp_timers(uint64_t now)
{
    if (!tcp_next || now < tcp_next)
        return tcp_next;
    tcp_next = 0;
    while (tw_head && tw_head->misc_deadline <= now)
        finish(tw_head, 0); /* TIME-WAIT over */
    for (uint32_t budget = theap_n; theap_n && theap[0]->deadline <= now && budget; budget--) {
        struct tcb *t = theap[0];
        on_timeout(t, now); /* t may be gone; its new deadline went through timer_update */
        if (theap_n && theap[0] == t && t->deadline <= now)
            break; /* not moved on: it waits for the next pass */
    }
    uint64_t next = tw_head ? tw_head->misc_deadline : 0;
    if (theap_n) {
        uint64_t d = theap[0]->deadline <= now ? now + 1000000ull : theap[0]->deadline;
        if (!next || d < next)
            next = d;
    }
    if (next && (!tcp_next || next < tcp_next))
        tcp_next = next;
    netif_flush();
    return tcp_next;
}

/* ---- the socket API (app threads) ---- */

static struct tcb *conn(int c)
{
    if (c < 0 || c >= tcp_max || !handles[c] || handles[c]->app_closed)
        return 0;
    return handles[c];
}

int tcp_listen(uint16_t port)
{
    tcp_init();
    for (struct tcb *l = listeners; l; l = l->hnext)
        if (l->state == T_LISTEN && l->lport == port)
            return NET_ERR_INVAL;
    struct tcb *t = alloc_tcb();
    if (!t)
        return NET_ERR_NOBUFS;
    t->state = T_LISTEN;
    t->lport = port;
    t->backlog = (uint32_t)tcp_max;
    t->hnext = listeners;
    listeners = t;
    t->hashed = 1;
    return t->handle;
}

int tcp_accept(int listener, uint64_t deadline_ns)
{
    struct tcb *l = conn(listener);
    if (!l || l->state != T_LISTEN)
        return NET_ERR_INVAL;
    mutex_lock(&tcp_mutex);
    for (;;) {
        struct tcb *t = l->aq_head;
        if (t) {
            queue_remove(l, t);
            t->accepted = 1;
            t->parent = 0;
            l->pending--;
            mutex_unlock(&tcp_mutex);
            return t->handle;
        }
        if (cond_timedwait(&l->cond, &tcp_mutex, deadline_ns) == ETIMEDOUT) {
            mutex_unlock(&tcp_mutex);
            return NET_ERR_TIMEOUT;
        }
    }
}

int tcp_connect(uint32_t ip, uint16_t port, uint64_t deadline_ns)
{
    tcp_init();
    if (!next_port) /* spread VMs (and reboots) over the ephemeral range */
        next_port = (uint16_t)(40000 + (DENALI_VREGS->vm_id * 7919u + (uint32_t)now_ns()) % 20000);
    struct tcb *l;
    for (int tries = 0; tries < 20000; tries++) { /* a local port no connection to ip:port uses */
        if (!find(ip, port, next_port, &l))
            break;
        if (++next_port < 40000)
            next_port = 40000;
    }
    struct tcb *t = alloc_tcb();
    if (!t)
        return NET_ERR_NOBUFS;
    st.active_opens++;
    t->rip = ip;
    t->rport = port;
    t->lport = next_port++;
    if (next_port < 40000)
        next_port = 40000;
    t->accepted = 1;
    t->state = T_SYN_SENT;
    init_iss(t, new_iss(ip, port, t->lport));
    rehash(t);
    send_seg(t, F_SYN, t->iss, 0);
    t->snd_nxt = t->snd_max = t->iss + 1;
    t->rtt_timing = 1;
    t->rtt_seq = t->snd_nxt;
    t->rtt_start = clock_ns();
    arm_rto(t);
    netif_flush();
    mutex_lock(&tcp_mutex);
    while (t->state == T_SYN_SENT) {
        if (cond_timedwait(&t->cond, &tcp_mutex, deadline_ns) == ETIMEDOUT)
            break;
    }
    mutex_unlock(&tcp_mutex);
    if (t->state == T_ESTAB)
        return t->handle;
    int err = t->reset ? NET_ERR_RESET : NET_ERR_TIMEOUT;
    free_tcb(t);
    return err;
}

int tcp_send(int c, const void *buf, size_t len, uint64_t deadline_ns)
{
    struct tcb *t = conn(c);
    if (!t)
        return NET_ERR_INVAL;
    const uint8_t *p = buf;
    size_t done = 0;
    uint64_t nomem_since = 0;
    mutex_lock(&tcp_mutex);
    while (done < len) {
        if ((t->state != T_ESTAB && t->state != T_CLOSE_WAIT) || t->fin_queued) {
            mutex_unlock(&tcp_mutex);
            return t->reset ? NET_ERR_RESET : NET_ERR_CLOSED;
        }
        uint32_t want = (uint32_t)umin((uint32_t)(len - done), TCP_BUF_MAX);
        if (!sbuf_reserve(t, want) || t->ssize == t->slen) {
            /* full: wait for ACKs; no memory for any buffer: give up after 100 ms */
            if (!t->sbuf && nomem_since && now_ns() - nomem_since > 100000000ull) {
                mutex_unlock(&tcp_mutex);
                return NET_ERR_NOBUFS;
            }
            if (!t->sbuf && !nomem_since)
                nomem_since = now_ns();
            uint64_t until = t->sbuf ? deadline_ns : now_ns() + 10000000ull;
            if (deadline_ns && until > deadline_ns)
                until = deadline_ns;
            if (cond_timedwait(&t->cond, &tcp_mutex, until) == ETIMEDOUT && deadline_ns &&
                now_ns() >= deadline_ns) {
                mutex_unlock(&tcp_mutex);
                return NET_ERR_TIMEOUT;
            }
            continue;
        }
        uint32_t n = umin(want, t->ssize - t->slen);
        ring_write(t->sbuf, t->ssize, t->snd_una - t->iss - 1 + t->slen, p + done, n);
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
        if (t->state == T_CLOSED) {
            mutex_unlock(&tcp_mutex);
            return t->reset ? NET_ERR_RESET : 0;
        }
        if (t->fin_rcvd) {
            mutex_unlock(&tcp_mutex);
            return 0; /* the peer sent FIN */
        }
        if (cond_timedwait(&t->cond, &tcp_mutex, deadline_ns) == ETIMEDOUT) {
            mutex_unlock(&tcp_mutex);
            return NET_ERR_TIMEOUT;
        }
    }
    uint32_t n = umin(t->rlen, (uint32_t)cap);
    uint32_t before = t->rcv_adv - t->rcv_nxt;
    ring_read(t->rbuf, t->rsize, rd_seq(t) - t->irs - 1, buf, n);
    t->rlen -= n;
    /* the window reopened by at least two segments or half the buffer, or by a segment
     * while the peer had less than two left (it may be waiting for room for a full
     * one): say so (receiver silly-window avoidance, RFC 9293 3.8.6.2.2) */
    uint32_t could = t->rsize - t->rlen;
    if (could > (65535u << t->rcv_shift))
        could = 65535u << t->rcv_shift;
    if (t->state >= T_ESTAB && t->state <= T_FIN_WAIT_2 && could > before &&
        (could - before >= 2 * MSS || could - before >= t->rsize / 2 ||
         (before < 2 * MSS && could - before >= umin(t->rsize / 2, MSS)))) {
        send_ack(t);
        netif_flush();
    }
    mutex_unlock(&tcp_mutex);
    return (int)n;
}

void tcp_cork(int c, int on)
{
    struct tcb *t = conn(c);
    if (!t)
        return;
    t->corked = (uint8_t)(on != 0);
    if (!on) {
        output(t);
        netif_flush();
    }
}

void tcp_abort(int c)
{
    struct tcb *t = conn(c);
    if (!t)
        return;
    t->app_closed = 1;
    st.aborts++;
    if (t->state >= T_SYN_RCVD && t->state != T_TIME_WAIT)
        send_rst(t->rip, t->lport, t->rport, t->snd_nxt, 0, 0);
    netif_flush();
    free_tcb(t);
}

void tcp_close(int c)
{
    struct tcb *t = conn(c);
    if (!t)
        return;
    if (t->state == T_LISTEN) {
        t->app_closed = 1;
        unhash(t);
        t->state = T_CLOSED;
        t->lclosed = 1;
        t->hnext = listeners; /* kept (closed) on the list until its children leave */
        listeners = t;
        t->hashed = 1;
        for (struct tcb *q; (q = t->aq_head);) {
            q->app_closed = 1;
            send_rst(q->rip, q->lport, q->rport, q->snd_nxt, 0, 0);
            free_tcb(q);
        }
        release_listener(t);
        netif_flush();
        return;
    }
    if (t->state == T_CLOSED || t->state == T_SYN_SENT || t->state == T_TIME_WAIT) {
        if (t->state == T_TIME_WAIT) { /* the protocol still needs it: it frees itself */
            t->app_closed = 1;
            return;
        }
        t->app_closed = 1;
        free_tcb(t);
        return;
    }
    if (t->rlen) { /* unread data: abort (RFC 9293 3.10.4) */
        tcp_abort(c);
        return;
    }
    t->app_closed = 1;
    t->fin_queued = 1;
    output(t);
    if (t->state == T_FIN_WAIT_2 && !t->misc_deadline) {
        t->misc_deadline = now_ns() + ORPHAN_NS;
        timer_update(t);
    }
    netif_flush();
}

/* Readiness without blocking (poll/select in the Linux personality): what tcp_accept,
 * tcp_recv and tcp_send would do now. */
int tcp_poll(int c)
{
    struct tcb *t = conn(c);
    if (!t || t->state == T_FREE)
        return TCP_POLL_HUP;
    if (t->state == T_LISTEN)
        return t->aq_head ? TCP_POLL_IN : 0;
    int ev = 0;
    if (t->rlen || t->fin_rcvd || t->state == T_CLOSED)
        ev |= TCP_POLL_IN; /* data, or tcp_recv returns 0 / an error at once */
    if ((t->state == T_ESTAB || t->state == T_CLOSE_WAIT) && !t->fin_queued &&
        t->slen < TCP_BUF_MAX)
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

/* A connection whose handshake, data or FIN the peer has not acknowledged yet. */
int tcp_busy(void)
{
    for (int i = 0; i < tcp_max; i++) {
        const struct tcb *t = handles[i];
        if (!t)
            continue;
        if (t->state == T_SYN_SENT || t->state == T_SYN_RCVD || t->state == T_FIN_WAIT_1 ||
            t->state == T_CLOSING || t->state == T_LAST_ACK ||
            ((t->state == T_ESTAB || t->state == T_CLOSE_WAIT) && (t->slen || t->fin_queued)))
            return 1;
    }
    return 0;
}
