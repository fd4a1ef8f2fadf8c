/* sock.c: IPv4 TCP and UDP sockets over the guestos network stack (net/).
 *
 * The stack starts at boot when the command line configures it (ip=A.B.C.D/N gw=...),
 * and its network thread runs whenever the program waits, so a program blocked in
 * accept, recv or poll leaves the VM idle until a frame arrives (idle-with-timeout).
 * Both the socketcall multiplexer and the direct calls (socket, bind, ...) are served.
 *
 * What differs from Linux, plainly: one IPv4 interface and no loopback (127.0.0.1 is
 * not reachable); connect() always completes before it returns (a non-blocking
 * connect succeeds or fails at once, never EINPROGRESS); send() on a TCP socket waits
 * until all its bytes are queued; shutdown() of the writing side closes the whole
 * connection; at most 8 UDP sockets (the stack's limit). */
#include <net/net.h>
#include <net/tcp.h>
#include <stdlib.h>
#include <string.h>
#include "lx.h"

#define AF_INET 2
#define SOCK_STREAM 1
#define SOCK_DGRAM 2
#define SOCK_NONBLOCK 04000
#define SOCK_CLOEXEC 02000000
#define MSG_PEEK 0x2
#define MSG_DONTWAIT 0x40
#define MSG_NOSIGNAL 0x4000
#define SOL_SOCKET 1
#define SO_TYPE 3
#define SO_ERROR 4
#define SO_SNDBUF 7
#define SO_RCVBUF 8
#define SO_RCVTIMEO 20
#define PEEK_MAX 2048

enum { S_NEW, S_BOUND, S_LISTEN, S_CONN, S_CLOSED };

struct sock {
    int type;
    int state;
    int handle;          /* tcp connection/listener, or udp socket; -1 none */
    uint16_t lport;
    uint32_t rip;        /* host order */
    uint16_t rport;
    uint64_t rcvtimeo;   /* ns, 0 = none */
    uint32_t peek_len;
    uint8_t peek[PEEK_MAX];
};

static int net_up;

void sock_init(void)
{
    char v[8];
    if (cmdline_get("ip", v, sizeof v) < 0)
        return;
    int r = net_start();
    if (r != NET_OK)
        lx_err("denali-linux: the network did not start (%d); sockets will fail\n", r);
    else
        net_up = 1;
}

/* At exit: let the stack finish sending what the program handed it (queued TCP data and
 * FINs, a datagram waiting for ARP), as a Linux kernel would after the process is gone;
 * at most two seconds. */
void sock_linger(void)
{
    if (!net_up)
        return;
    uint64_t until = clock_ns() + 2000000000ull;
    while (net_busy() && clock_ns() < until)
        thread_sleep_ns(1000000);
}

static struct sock *sock_of(int fd, long *err)
{
    struct lx_file *f = fd_get(fd);
    if (!f) {
        *err = -LX_EBADF;
        return 0;
    }
    if (f->kind != LX_F_SOCK) {
        *err = -LX_ENOTSOCK;
        return 0;
    }
    return f->priv;
}

static uint16_t ephemeral(void)
{
    static uint16_t next;
    if (!next)
        next = (uint16_t)(32768 + (DENALI_VREGS->vm_id * 7u + (uint32_t)clock_ns()) % 28000);
    uint16_t p = next++;
    if (next < 32768)
        next = 32768;
    return p;
}

/* The deadline for a blocking wait: the socket's timeout, cut short by a SIGALRM. */
static uint64_t wait_deadline(const struct sock *s, int *timed)
{
    uint64_t dl = s->rcvtimeo ? clock_ns() + s->rcvtimeo : 0;
    uint64_t al = lx_alarm_deadline();
    *timed = dl != 0;
    if (al && (!dl || al < dl))
        dl = al;
    return dl;
}

static long from_net_err(int r)
{
    switch (r) {
    case NET_ERR_TIMEOUT: return -LX_ETIMEDOUT;
    case NET_ERR_RESET: return -LX_ECONNRESET;
    case NET_ERR_CLOSED: return -LX_EPIPE;
    case NET_ERR_NOBUFS: return -LX_ENOBUFS;
    case NET_ERR_NODEV: return -LX_ENETUNREACH;
    default: return -LX_EINVAL;
    }
}

static long get_addr(long addr, long len, uint32_t *ip, uint16_t *port)
{
    if (len < 8)
        return -LX_EINVAL;
    if (!UR(addr, 8))
        return -LX_EFAULT;
    const uint8_t *a = (const uint8_t *)addr;
    uint16_t fam = (uint16_t)(a[0] | a[1] << 8);
    if (fam != AF_INET)
        return -LX_EAFNOSUPPORT;
    *port = (uint16_t)(a[2] << 8 | a[3]);
    *ip = (uint32_t)a[4] << 24 | (uint32_t)a[5] << 16 | (uint32_t)a[6] << 8 | a[7];
    return 0;
}

static long put_addr(long addr, long lenp, uint32_t ip, uint16_t port)
{
    if (!addr)
        return 0;
    if (!UW(lenp, 4))
        return -LX_EFAULT;
    int32_t cap = *(int32_t *)lenp;
    if (cap < 0)
        return -LX_EINVAL;
    uint8_t a[16] = {AF_INET, 0, (uint8_t)(port >> 8), (uint8_t)port, (uint8_t)(ip >> 24),
                     (uint8_t)(ip >> 16), (uint8_t)(ip >> 8), (uint8_t)ip};
    uint32_t n = cap < 16 ? (uint32_t)cap : 16;
    if (!UW(addr, n))
        return -LX_EFAULT;
    memcpy((void *)addr, a, n);
    *(int32_t *)lenp = 16;
    return 0;
}

/* ---- file operations ---- */
static long sk_recv(struct sock *s, void *buf, uint32_t n, int flags, int nonblock, uint32_t *src, uint16_t *sport);
static long sk_send(struct sock *s, const void *buf, uint32_t n, int flags, uint32_t ip, uint16_t port);

static long f_read(struct lx_file *f, void *buf, uint32_t n)
{
    return sk_recv(f->priv, buf, n, 0, (f->flags & LX_O_NONBLOCK) != 0, 0, 0);
}

static long f_write(struct lx_file *f, const void *buf, uint32_t n)
{
    struct sock *s = f->priv;
    return sk_send(s, buf, n, 0, s->rip, s->rport);
}

static int f_poll(struct lx_file *f)
{
    struct sock *s = f->priv;
    if (s->type == SOCK_DGRAM)
        return (s->handle >= 0 && udp_pending(s->handle) ? LX_POLLIN : 0) | LX_POLLOUT;
    if (s->state == S_CLOSED)
        return LX_POLLIN | LX_POLLHUP;
    if (s->handle < 0)
        return LX_POLLOUT;
    if (s->peek_len)
        return LX_POLLIN | LX_POLLOUT;
    int ev = tcp_poll(s->handle), out = 0;
    if (ev & TCP_POLL_IN)
        out |= LX_POLLIN;
    if (ev & TCP_POLL_OUT)
        out |= LX_POLLOUT;
    if (ev & TCP_POLL_HUP)
        out |= LX_POLLHUP;
    return out;
}

static void f_close(struct lx_file *f)
{
    struct sock *s = f->priv;
    if (s->handle >= 0) {
        if (s->type == SOCK_STREAM)
            tcp_close(s->handle);
        else
            udp_close(s->handle);
    }
    free(s);
}

static long f_stat(struct lx_file *f, void *st)
{
    struct lx_stat64 *x = st;
    memset(x, 0, sizeof *x);
    x->st_mode = LX_S_IFSOCK | 0777;
    x->st_nlink = 1;
    x->st_blksize = 4096;
    x->st_ino = 0x4000 + ((uint32_t)(uintptr_t)f->priv & 0xffff);
    x->st_dev = 7;
    return 0;
}

static long f_seek(struct lx_file *f, int64_t off, int whence, uint64_t *out)
{
    (void)f, (void)off, (void)whence, (void)out;
    return -LX_ESPIPE;
}

static long f_ioctl(struct lx_file *f, uint32_t cmd, uint32_t arg)
{
    struct sock *s = f->priv;
    if (cmd == 0x541B) { /* FIONREAD */
        if (!UW(arg, 4))
            return -LX_EFAULT;
        *(int32_t *)arg = s->peek_len ? (int32_t)s->peek_len : (f_poll(f) & LX_POLLIN ? 1 : 0);
        return 0;
    }
    return -LX_ENOTTY;
}

static const struct lx_file_ops sock_ops = {
    .read = f_read, .write = f_write, .poll = f_poll, .close = f_close, .stat = f_stat,
    .seek = f_seek, .ioctl = f_ioctl,
};

static long new_socket(int type, uint32_t flags)
{
    struct sock *s = calloc(1, sizeof *s);
    if (!s)
        return -LX_ENOMEM;
    s->type = type;
    s->handle = -1;
    struct lx_file *f = file_new(&sock_ops, LX_F_SOCK, s, LX_O_RDWR | (flags & SOCK_NONBLOCK ? LX_O_NONBLOCK : 0));
    if (!f) {
        free(s);
        return -LX_ENOMEM;
    }
    int fd = fd_install(f, 0, flags & SOCK_CLOEXEC);
    if (fd < 0)
        file_put(f);
    return fd;
}

long sys_socket(long domain, long type, long proto, long d, long e, long f)
{
    (void)d, (void)e, (void)f;
    if (domain != AF_INET)
        return -LX_EAFNOSUPPORT;
    int t = (int)(type & 0xf);
    if (t != SOCK_STREAM && t != SOCK_DGRAM)
        return -LX_EPROTONOSUPPORT;
    if (proto && !(t == SOCK_STREAM && proto == 6) && !(t == SOCK_DGRAM && proto == 17))
        return -LX_EPROTONOSUPPORT;
    return new_socket(t, (uint32_t)type);
}

long sys_socketpair(long a, long b, long c, long d, long e, long f)
{
    (void)a, (void)b, (void)c, (void)d, (void)e, (void)f;
    return -LX_EOPNOTSUPP; /* AF_UNIX is not provided */
}

long sys_bind(long fd, long addr, long len, long d, long e, long f)
{
    (void)d, (void)e, (void)f;
    long err = 0;
    struct sock *s = sock_of((int)fd, &err);
    if (!s)
        return err;
    uint32_t ip;
    uint16_t port;
    err = get_addr(addr, len, &ip, &port);
    if (err)
        return err;
    if (s->state != S_NEW)
        return -LX_EINVAL;
    if (ip && (!net_up || ip != net_ip()))
        return -LX_EADDRNOTAVAIL;
    s->lport = port ? port : ephemeral();
    if (s->type == SOCK_DGRAM) {
        if (!net_up)
            return -LX_EADDRNOTAVAIL;
        int h = udp_bind(s->lport);
        if (h < 0)
            return from_net_err(h);
        s->handle = h;
    }
    s->state = S_BOUND;
    return 0;
}

long sys_listen(long fd, long backlog, long c, long d, long e, long f)
{
    (void)backlog, (void)c, (void)d, (void)e, (void)f;
    long err = 0;
    struct sock *s = sock_of((int)fd, &err);
    if (!s)
        return err;
    if (s->type != SOCK_STREAM)
        return -LX_EOPNOTSUPP;
    if (s->state == S_LISTEN)
        return 0;
    if (s->state == S_NEW)
        s->lport = ephemeral();
    else if (s->state != S_BOUND)
        return -LX_EINVAL;
    int h = tcp_listen(s->lport);
    if (h < 0)
        return h == NET_ERR_INVAL ? -LX_EADDRINUSE : from_net_err(h);
    s->handle = h;
    s->state = S_LISTEN;
    return 0;
}

long sys_accept4(long fd, long addr, long lenp, long flags, long e, long f)
{
    (void)e, (void)f;
    long err = 0;
    struct lx_file *fl = fd_get((int)fd);
    struct sock *s = sock_of((int)fd, &err);
    if (!s)
        return err;
    if (flags & ~(SOCK_NONBLOCK | SOCK_CLOEXEC))
        return -LX_EINVAL;
    if (s->state != S_LISTEN)
        return -LX_EINVAL;
    int c;
    for (;;) {
        if (!(tcp_poll(s->handle) & TCP_POLL_IN)) {
            if (fl->flags & LX_O_NONBLOCK)
                return -LX_EAGAIN;
            if (lx_sig_pending)
                return -LX_EINTR;
        }
        int timed;
        uint64_t dl = wait_deadline(s, &timed);
        c = tcp_accept(s->handle, dl);
        if (c >= 0)
            break;
        if (c != NET_ERR_TIMEOUT)
            return from_net_err(c);
        lx_check_alarm();
        if (lx_sig_pending)
            return -LX_EINTR;
        if (timed)
            return -LX_EAGAIN;
    }
    long nfd = new_socket(SOCK_STREAM, (uint32_t)flags);
    if (nfd < 0) {
        tcp_close(c);
        return nfd;
    }
    struct sock *n = fd_get((int)nfd)->priv;
    n->handle = c;
    n->state = S_CONN;
    tcp_endpoints(c, &n->lport, &n->rip, &n->rport);
    if (addr) {
        long r = put_addr(addr, lenp, n->rip, n->rport);
        if (r)
            return r;
    }
    return nfd;
}

long sys_connect(long fd, long addr, long len, long d, long e, long f)
{
    (void)d, (void)e, (void)f;
    long err = 0;
    struct sock *s = sock_of((int)fd, &err);
    if (!s)
        return err;
    uint32_t ip;
    uint16_t port;
    err = get_addr(addr, len, &ip, &port);
    if (err)
        return err;
    if (s->type == SOCK_DGRAM) {
        s->rip = ip;
        s->rport = port;
        return 0;
    }
    if (s->state == S_CONN)
        return -LX_EISCONN;
    if (s->state == S_LISTEN)
        return -LX_EINVAL;
    if (!net_up || (ip >> 24) == 127)
        return -LX_ENETUNREACH;
    int timed;
    uint64_t dl = wait_deadline(s, &timed);
    if (!dl || dl > clock_ns() + 75000000000ull)
        dl = clock_ns() + 75000000000ull; /* Linux gives up after about that long */
    int c = tcp_connect(ip, port, dl);
    if (c < 0)
        return c == NET_ERR_RESET ? -LX_ECONNREFUSED : c == NET_ERR_TIMEOUT ? -LX_ETIMEDOUT : from_net_err(c);
    s->handle = c;
    s->state = S_CONN;
    s->rip = ip;
    s->rport = port;
    uint32_t rip;
    uint16_t rport;
    tcp_endpoints(c, &s->lport, &rip, &rport);
    return 0;
}

static long sk_recv(struct sock *s, void *buf, uint32_t n, int flags, int nonblock, uint32_t *src, uint16_t *sport)
{
    if (flags & MSG_DONTWAIT)
        nonblock = 1;
    if (s->type == SOCK_DGRAM) {
        if (s->handle < 0)
            return nonblock ? -LX_EAGAIN : -LX_ENOTCONN;
        for (;;) {
            if (!udp_pending(s->handle)) {
                if (nonblock)
                    return -LX_EAGAIN;
                if (lx_sig_pending)
                    return -LX_EINTR;
            }
            int timed;
            uint64_t dl = wait_deadline(s, &timed);
            uint32_t ip;
            uint16_t port;
            static uint8_t dgram[NET_UDP_MAX];
            int r = udp_recvfrom(s->handle, dgram, sizeof dgram, &ip, &port, dl);
            if (r >= 0) {
                uint32_t k = (uint32_t)r < n ? (uint32_t)r : n;
                memcpy(buf, dgram, k);
                if (src)
                    *src = ip, *sport = port;
                return (long)k;
            }
            lx_check_alarm();
            if (lx_sig_pending)
                return -LX_EINTR;
            if (timed)
                return -LX_EAGAIN;
        }
    }
    if (s->state == S_CLOSED)
        return 0;
    if (s->state != S_CONN)
        return -LX_ENOTCONN;
    if (src)
        *src = s->rip, *sport = s->rport;
    if (s->peek_len) {
        uint32_t k = n < s->peek_len ? n : s->peek_len;
        memcpy(buf, s->peek, k);
        if (!(flags & MSG_PEEK)) {
            memmove(s->peek, s->peek + k, s->peek_len - k);
            s->peek_len -= k;
        }
        return (long)k;
    }
    for (;;) {
        if (!(tcp_poll(s->handle) & (TCP_POLL_IN | TCP_POLL_HUP))) {
            if (nonblock)
                return -LX_EAGAIN;
            if (lx_sig_pending)
                return -LX_EINTR;
        }
        int timed;
        uint64_t dl = wait_deadline(s, &timed);
        uint32_t cap = flags & MSG_PEEK ? (n < PEEK_MAX ? n : PEEK_MAX) : n;
        int r = tcp_recv(s->handle, flags & MSG_PEEK ? s->peek : buf, cap, dl);
        if (r >= 0) {
            if (flags & MSG_PEEK) {
                s->peek_len = (uint32_t)r;
                memcpy(buf, s->peek, (size_t)r);
            }
            return r;
        }
        if (r != NET_ERR_TIMEOUT)
            return from_net_err(r);
        lx_check_alarm();
        if (lx_sig_pending)
            return -LX_EINTR;
        if (timed)
            return -LX_EAGAIN;
    }
}

static long sk_send(struct sock *s, const void *buf, uint32_t n, int flags, uint32_t ip, uint16_t port)
{
    if (s->type == SOCK_DGRAM) {
        if (!port)
            return -LX_EDESTADDRREQ;
        if (!net_up)
            return -LX_ENETUNREACH;
        if (n > NET_UDP_MAX)
            return -LX_EMSGSIZE;
        if (s->handle < 0) {
            int h = udp_bind(s->lport ? s->lport : (s->lport = ephemeral()));
            if (h < 0)
                return from_net_err(h);
            s->handle = h;
            s->state = S_BOUND;
        }
        int r = udp_sendto(s->handle, ip, port, buf, n);
        return r < 0 ? from_net_err(r) : r;
    }
    if (s->state != S_CONN) {
        if (s->state == S_CLOSED) {
            if (!(flags & MSG_NOSIGNAL))
                lx_raise(LX_SIGPIPE);
            return -LX_EPIPE;
        }
        return -LX_ENOTCONN;
    }
    int r = tcp_send(s->handle, buf, n, 0);
    if (r < 0) {
        if (r == NET_ERR_CLOSED || r == NET_ERR_RESET) {
            if (!(flags & MSG_NOSIGNAL))
                lx_raise(LX_SIGPIPE);
            return r == NET_ERR_RESET ? -LX_ECONNRESET : -LX_EPIPE;
        }
        return from_net_err(r);
    }
    return r;
}

long sys_sendto(long fd, long buf, long len, long flags, long addr, long alen)
{
    long err = 0;
    struct sock *s = sock_of((int)fd, &err);
    if (!s)
        return err;
    if (len < 0)
        return -LX_EINVAL;
    if (!UR(buf, len))
        return -LX_EFAULT;
    uint32_t ip = s->rip;
    uint16_t port = s->rport;
    if (addr && s->type == SOCK_DGRAM) {
        err = get_addr(addr, alen, &ip, &port);
        if (err)
            return err;
    }
    return sk_send(s, (const void *)buf, (uint32_t)len, (int)flags, ip, port);
}

long sys_recvfrom(long fd, long buf, long len, long flags, long addr, long lenp)
{
    long err = 0;
    struct lx_file *fl = fd_get((int)fd);
    struct sock *s = sock_of((int)fd, &err);
    if (!s)
        return err;
    if (len < 0)
        return -LX_EINVAL;
    if (!UW(buf, len))
        return -LX_EFAULT;
    uint32_t ip = 0;
    uint16_t port = 0;
    long r = sk_recv(s, (void *)buf, (uint32_t)len, (int)flags, (fl->flags & LX_O_NONBLOCK) != 0, &ip, &port);
    if (r >= 0 && addr) {
        long e2 = put_addr(addr, lenp, ip, port);
        if (e2)
            return e2;
    }
    return r;
}

struct lx_msghdr { uint32_t name, namelen, iov, iovlen, control, controllen, flags; };
struct lx_iov { uint32_t base, len; };

long sys_sendmsg(long fd, long msg, long flags, long d, long e, long f)
{
    (void)d, (void)e, (void)f;
    if (!UR(msg, sizeof(struct lx_msghdr)))
        return -LX_EFAULT;
    const struct lx_msghdr *m = (const struct lx_msghdr *)msg;
    if (m->iovlen > 64 || !UR(m->iov, m->iovlen * 8))
        return -LX_EINVAL;
    const struct lx_iov *v = (const struct lx_iov *)m->iov;
    long total = 0;
    for (uint32_t i = 0; i < m->iovlen; i++) {
        if (!v[i].len)
            continue;
        long r = sys_sendto(fd, (long)v[i].base, (long)v[i].len, flags, (long)m->name, (long)m->namelen);
        if (r < 0)
            return total ? total : r;
        total += r;
    }
    return total;
}

long sys_recvmsg(long fd, long msg, long flags, long d, long e, long f)
{
    (void)d, (void)e, (void)f;
    if (!UW(msg, sizeof(struct lx_msghdr)))
        return -LX_EFAULT;
    struct lx_msghdr *m = (struct lx_msghdr *)msg;
    if (m->iovlen > 64 || !UR(m->iov, m->iovlen * 8))
        return -LX_EINVAL;
    const struct lx_iov *v = (const struct lx_iov *)m->iov;
    for (uint32_t i = 0; i < m->iovlen; i++) {
        if (!v[i].len)
            continue;
        int32_t nl = (int32_t)m->namelen;
        long r = sys_recvfrom(fd, (long)v[i].base, (long)v[i].len, flags, (long)m->name,
                              m->name ? (long)&nl : 0);
        if (r >= 0) {
            m->namelen = m->name ? (uint32_t)nl : 0;
            m->controllen = 0;
            m->flags = 0;
        }
        return r; /* one buffer per message */
    }
    return 0;
}

long sys_shutdown(long fd, long how, long c, long d, long e, long f)
{
    (void)c, (void)d, (void)e, (void)f;
    long err = 0;
    struct sock *s = sock_of((int)fd, &err);
    if (!s)
        return err;
    if (how < 0 || how > 2)
        return -LX_EINVAL;
    if (s->type != SOCK_STREAM || s->state != S_CONN)
        return s->type == SOCK_STREAM ? -LX_ENOTCONN : 0;
    if (how == 0)
        return 0; /* SHUT_RD: nothing to do until close */
    tcp_close(s->handle);
    s->handle = -1;
    s->state = S_CLOSED;
    return 0;
}

long sys_getsockname(long fd, long addr, long lenp, long d, long e, long f)
{
    (void)d, (void)e, (void)f;
    long err = 0;
    struct sock *s = sock_of((int)fd, &err);
    if (!s)
        return err;
    return put_addr(addr, lenp, net_up && s->state != S_NEW ? net_ip() : 0, s->lport);
}

long sys_getpeername(long fd, long addr, long lenp, long d, long e, long f)
{
    (void)d, (void)e, (void)f;
    long err = 0;
    struct sock *s = sock_of((int)fd, &err);
    if (!s)
        return err;
    if (s->state != S_CONN && !(s->type == SOCK_DGRAM && s->rport))
        return -LX_ENOTCONN;
    return put_addr(addr, lenp, s->rip, s->rport);
}

long sys_setsockopt(long fd, long level, long name, long val, long len, long f)
{
    (void)f;
    long err = 0;
    struct sock *s = sock_of((int)fd, &err);
    if (!s)
        return err;
    if (level == SOL_SOCKET && name == SO_RCVTIMEO) {
        if (len < 8 || !UR(val, 8))
            return -LX_EINVAL;
        const int32_t *tv = (const int32_t *)val;
        s->rcvtimeo = (uint64_t)(uint32_t)tv[0] * 1000000000ull + (uint64_t)(uint32_t)tv[1] * 1000ull;
        return 0;
    }
    return 0; /* other options (SO_REUSEADDR, TCP_NODELAY, ...) are accepted and have no effect */
}

long sys_getsockopt(long fd, long level, long name, long val, long lenp, long f)
{
    (void)f;
    long err = 0;
    struct sock *s = sock_of((int)fd, &err);
    if (!s)
        return err;
    if (!UW(lenp, 4))
        return -LX_EFAULT;
    int32_t v = 0;
    if (level == SOL_SOCKET) {
        if (name == SO_TYPE)
            v = s->type;
        else if (name == SO_ERROR)
            v = 0;
        else if (name == SO_SNDBUF || name == SO_RCVBUF)
            v = TCP_BUF_MAX;
        else
            v = 0;
    }
    if (*(int32_t *)lenp < 4 || !UW(val, 4))
        return -LX_EINVAL;
    *(int32_t *)val = v;
    *(int32_t *)lenp = 4;
    return 0;
}

long sys_socketcall(long call, long args, long c, long d, long e, long f)
{
    (void)c, (void)d, (void)e, (void)f;
    static const uint8_t nargs[19] = {0, 3, 3, 3, 2, 3, 3, 3, 4, 4, 4, 6, 6, 2, 5, 5, 3, 3, 4};
    if (call < 1 || call > 18)
        return -LX_EINVAL;
    if (!UR(args, nargs[call] * 4u))
        return -LX_EFAULT;
    const long *a = (const long *)args;
    switch (call) {
    case 1: return sys_socket(a[0], a[1], a[2], 0, 0, 0);
    case 2: return sys_bind(a[0], a[1], a[2], 0, 0, 0);
    case 3: return sys_connect(a[0], a[1], a[2], 0, 0, 0);
    case 4: return sys_listen(a[0], a[1], 0, 0, 0, 0);
    case 5: return sys_accept4(a[0], a[1], a[2], 0, 0, 0);
    case 6: return sys_getsockname(a[0], a[1], a[2], 0, 0, 0);
    case 7: return sys_getpeername(a[0], a[1], a[2], 0, 0, 0);
    case 8: return sys_socketpair(a[0], a[1], a[2], a[3], 0, 0);
    case 9: return sys_sendto(a[0], a[1], a[2], a[3], 0, 0);
    case 10: return sys_recvfrom(a[0], a[1], a[2], a[3], 0, 0);
    case 11: return sys_sendto(a[0], a[1], a[2], a[3], a[4], a[5]);
    case 12: return sys_recvfrom(a[0], a[1], a[2], a[3], a[4], a[5]);
    case 13: return sys_shutdown(a[0], a[1], 0, 0, 0, 0);
    case 14: return sys_setsockopt(a[0], a[1], a[2], a[3], a[4], 0);
    case 15: return sys_getsockopt(a[0], a[1], a[2], a[3], a[4], 0);
    case 16: return sys_sendmsg(a[0], a[1], a[2], 0, 0, 0);
    case 17: return sys_recvmsg(a[0], a[1], a[2], 0, 0, 0);
    default: return sys_accept4(a[0], a[1], a[2], a[3], 0, 0);
    }
}
