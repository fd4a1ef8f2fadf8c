/* httpget: HTTP client and load generator.
 * cmdline: ip=... url=http://A.B.C.D[:P]/path [count=N] [conc=C] [close=1] [print=1]
 *          [timeout=SECONDS per request, default 20]
 * Fetches the URL count times over conc keep-alive connections (close=1: a new
 * connection per request, "Connection: close", read to the server's FIN), checks the
 * length (and the /bytes/ pattern), prints "httpget: ok=.. fail=.. bytes=.. ms=..",
 * exits 0 iff all were ok; print=1 also prints the last body. With ping=A.B.C.D
 * instead: "ping: r/N replies". */
#include <ilwaco.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <net/net.h>
#include <net/tcp.h>
#include <fs/fs.h>

static uint32_t dst;
static uint16_t port = 80;
static char path[256];
static int per_conn, ok_count, fail_count, close_each, print_body;
static uint64_t timeout_ns = 20000000000ull; /* per request: timeout=SECONDS */
static char last_body[2048];
static unsigned long long total_bytes;
static uint32_t last_crc; /* CRC-32 of the last body received (not /bytes/), printed at the end */
#define PATTERN_RUN 4096
static char abc[PATTERN_RUN + 32]; /* 'a' + i % 26 */

static const char *last_why;
static int last_code;
static int r_last;

/* Remembers why the last request failed (printed at the end); returns 0. */
static int fail_why(const char *why, int code)
{
    last_why = why;
    last_code = code;
    return 0;
}

static char bad_head[160]; /* the start of the last malformed response, printable */

static void snapshot(const char *p, size_t n)
{
    size_t o = 0;
    for (size_t i = 0; i < n && o + 5 < sizeof bad_head; i++) {
        unsigned char ch = (unsigned char)p[i];
        if (ch >= 32 && ch < 127 && ch != '\\')
            bad_head[o++] = (char)ch;
        else
            o += (size_t)snprintf(bad_head + o, sizeof bad_head - o, "\\x%02x", ch);
    }
    bad_head[o] = 0;
}

static int fetch_one(int c, char *buf, size_t cap)
{
    char req[320];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: denali\r\n%s\r\n", path,
                     close_each ? "Connection: close\r\n" : "");
    uint64_t dl = now_ns() + timeout_ns;
    if (tcp_send(c, req, (size_t)n, dl) != n)
        return fail_why("send", r_last);
    size_t have = 0;
    char *end;
    buf[0] = 0;
    while (!(end = strstr(buf, "\r\n\r\n"))) {
        if (have >= cap - 1)
            return fail_why("header too long", r_last);
        int r = r_last = tcp_recv(c, buf + have, cap - 1 - have, dl);
        if (r <= 0)
            return fail_why("recv header", r_last);
        have += (size_t)r;
        buf[have] = 0;
    }
    char *cl = strstr(buf, "Content-Length: ");
    if (!cl || strncmp(buf, "HTTP/1.1 200", 12)) {
        snapshot(buf, have);
        return fail_why("bad status", r_last);
    }
    unsigned long long want = strtoul(cl + 16, 0, 10), got = 0;
    size_t body = have - (size_t)(end + 4 - buf);
    int pattern = !strncmp(path, "/bytes/", 7);
    unsigned long long pos = 0;
    const char *p = end + 4;
    uint32_t crc = 0;
    for (;;) {
        if (pattern) { /* compared with the pattern itself, in runs */
            for (size_t i = 0; i < body;) {
                size_t k = body - i < PATTERN_RUN ? body - i : PATTERN_RUN;
                if (memcmp(p + i, abc + (pos + i) % 26, k))
                    return fail_why("pattern", r_last);
                i += k;
            }
            pos += body;
        } else {
            crc = fs_crc32(crc, p, body); /* other documents: their CRC is printed */
            if (print_body && got + body < sizeof last_body) {
                memcpy(last_body + got, p, body);
                last_body[got + body] = 0;
            }
        }
        got += body;
        if (got >= want)
            break;
        int r = r_last = tcp_recv(c, buf, cap, dl);
        if (r <= 0)
            return fail_why("recv body", r_last);
        p = buf;
        body = (size_t)r;
    }
    total_bytes += got;
    last_crc = crc;
    if (got != want) {
        snapshot(buf, have);
        return fail_why("length", r_last);
    }
    if (close_each) { /* the server closes: its FIN must arrive */
        int r = r_last = tcp_recv(c, buf, cap, dl);
        if (r != 0)
            return fail_why("no FIN", r_last);
    }
    return 1;
}

static void worker(void *arg)
{
    (void)arg;
    static char bufs[64][4096];
    static int next;
    char *buf = bufs[next++ % 64];
    if (close_each) {
        for (int i = 0; i < per_conn; i++) {
            int c = tcp_connect(dst, port, now_ns() + 5000000000ull);
            if (c < 0)
                fail_why("connect", c);
            if (c >= 0 && fetch_one(c, buf, 4096))
                ok_count++;
            else
                fail_count++;
            if (c >= 0)
                tcp_close(c);
        }
        return;
    }
    int c = tcp_connect(dst, port, now_ns() + 5000000000ull);
    for (int i = 0; i < per_conn; i++) {
        if (c < 0 || !fetch_one(c, buf, 4096)) {
            fail_count++;
            if (c >= 0)
                tcp_close(c);
            c = tcp_connect(dst, port, now_ns() + 5000000000ull);
        } else {
            ok_count++;
        }
    }
    if (c >= 0)
        tcp_close(c);
}

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    char v[300];
    if (net_start() != NET_OK) {
        printf("httpget: no network (need a NIC and ip=A.B.C.D/N)\n");
        return 2;
    }
    int count = cmdline_get("count", v, sizeof v) >= 0 ? atoi(v) : 1;
    if (cmdline_get("ping", v, sizeof v) >= 0) {
        uint32_t to = net_parse_ip(v);
        int replies = 0;
        for (int i = 0; i < count; i++)
            replies += net_ping(to, (uint16_t)i, 1000000000ull) == NET_OK;
        printf("ping: %d/%d replies\n", replies, count);
        return replies == count ? 0 : 1;
    }
    if (cmdline_get("url", v, sizeof v) < 0 || strncmp(v, "http://", 7)) {
        printf("httpget: need url=http://A.B.C.D/path\n");
        return 2;
    }
    char *host = v + 7, *slash = strchr(host, '/');
    strlcpy(path, slash ? slash : "/", sizeof path);
    if (slash)
        *slash = 0;
    char *colon = strchr(host, ':');
    if (colon) {
        *colon = 0;
        port = (uint16_t)atoi(colon + 1);
    }
    dst = net_parse_ip(host);
    int conc = cmdline_get("conc", v, sizeof v) >= 0 ? atoi(v) : 1;
    if (conc < 1 || conc > 64 || count < conc) {
        printf("httpget: need 1 <= conc <= 64 and conc <= count\n");
        return 2;
    }
    per_conn = count / conc;
    close_each = cmdline_get("close", v, sizeof v) >= 0 && atoi(v);
    if (cmdline_get("timeout", v, sizeof v) >= 0 && atoi(v) > 0)
        timeout_ns = (uint64_t)atoi(v) * 1000000000ull;
    print_body = cmdline_get("print", v, sizeof v) >= 0 && atoi(v);
    for (size_t i = 0; i < sizeof abc; i++)
        abc[i] = (char)('a' + i % 26);
    uint64_t t0 = clock_ns();
    thread_t *t[64];
    for (int i = 0; i < conc; i++)
        t[i] = thread_create(worker, 0, 16384);
    for (int i = 0; i < conc; i++)
        thread_join(t[i]);
    unsigned ms = (unsigned)((clock_ns() - t0) / 1000000);
    /* linger (up to 2 s) until our closes are acknowledged, so servers are not left
     * retransmitting FINs to a VM that is gone */
    for (uint64_t until = now_ns() + 2000000000ull; tcp_get_stats()->conns > tcp_get_stats()->time_wait && clock_ns() < until;)
        thread_sleep_ns(5000000);
    printf("httpget: ok=%d fail=%d bytes=%llu ms=%u crc=%08x\n", ok_count, fail_count, total_bytes, ms,
           last_crc);
    if (fail_count)
        printf("httpget: last failure: %s (%d) %s\n", last_why ? last_why : "?", last_code, bad_head);
    if (print_body)
        printf("%s", last_body);
    const struct tcp_stats *ts = tcp_get_stats();
    printf("httpget: tcp retransmits=%u fast_retransmits=%u timeouts=%u sack_recoveries=%u "
           "ooo_segments=%u challenge_acks=%u rcv_buf_peak=%u\n", ts->retransmits, ts->fast_retransmits,
           ts->timeouts, ts->sack_recoveries, ts->ooo_segments, ts->challenge_acks, ts->rcv_buf_peak);
    return fail_count == 0 && ok_count == per_conn * conc ? 0 : 1;
}
