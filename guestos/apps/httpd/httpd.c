/* httpd: HTTP/1.1 server on port 80 (GET, keep-alive). "/bytes/N" answers exactly N
 * bytes where byte i is 'a' + i % 26; "/" a short page; "/stats" the server's own
 * counters (heap in use, threads, connections, TCP recovery counters) as "key value"
 * lines; anything else 404.
 * With a DNLFS disk (denali disk pack) named "site" (or disk=NAME), its files are served
 * first ("/" is index.html). cmdline: ip=A.B.C.D/N [gw=...] [disk=NAME] [idle=SECONDS]
 * (a connection that sends no request for that long is closed; default 30).
 * One detached thread (8 KiB of stack) per connection: it is freed when it ends. */
#include <ilwaco.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <net/net.h>
#include <net/tcp.h>
#include <fs/fs.h>

static fs_t *site; /* the file system on the disk named by disk= (default "site"), if any */
static uint64_t idle_ns = 30000000000ull;
static unsigned long long served, connections, thread_failures;
/* the /bytes/ pattern, long enough that any 16 KiB run of it starts at any phase */
#define PATTERN_RUN 16384
static char pattern[PATTERN_RUN + 32];

/* Serves a file from the site disk: 1 if it was found (and sent, ok in *ok), else 0. */
static int serve_file(int c, const char *path, int keep, int *ok);
static int send_all(int c, const char *s, size_t n)
{
    return tcp_send(c, s, n, now_ns() + 10000000000ull) == (int)n;
}

static int reply(int c, const char *status, unsigned long long len, int keep)
{
    char h[160];
    int n = snprintf(h, sizeof h, "HTTP/1.1 %s\r\nContent-Length: %llu\r\nContent-Type: text/plain\r\n%s\r\n",
                     status, len, keep ? "" : "Connection: close\r\n");
    return send_all(c, h, (size_t)n);
}

static int stats_page(char *out, size_t cap)
{
    const struct tcp_stats *t = tcp_get_stats();
    const struct net_stats *n = net_get_stats();
    return snprintf(out, cap,
                    "heap_used %u\nthreads %d\nrequests %llu\nconnections %llu\ntcp_conns %u\n"
                    "tcp_max_conns %u\ntcp_conns_peak %u\ntcp_refused %u\ntcp_retransmits %u\n"
                    "tcp_fast_retransmits %u\ntcp_timeouts %u\ntcp_sack_recoveries %u\ntcp_loss_probes %u\n"
                    "tcp_ooo_segments %u\ntcp_challenge_acks %u\ntcp_listen_dropped %u\n"
                    "tcp_time_wait_reused %u\ntcp_time_wait_reclaimed %u\nip_reassembled %u\n"
                    "tcp_aborts %u\ntcp_syn_evicted %u\ntcp_cc_random %u\ntcp_cc_congested %u\nthread_failures %llu\nrx_frames %u\ntx_frames %u\n",
                    (unsigned)heap_used_bytes(), thread_count(), served, connections, t->conns, t->max_conns,
                    t->conns_peak, t->refused, t->retransmits, t->fast_retransmits, t->timeouts,
                    t->sack_recoveries, t->loss_probes, t->ooo_segments, t->challenge_acks, t->listen_dropped,
                    t->time_wait_reused, t->time_wait_reclaimed, n->ip_reassembled, t->aborts, t->syn_evicted, t->cc_random, t->cc_congested, thread_failures, n->rx_frames,
                    n->tx_frames);
}

static void serve(void *arg)
{
    int c = (int)(long)arg;
    char req[1024];
    size_t have = 0;
    req[0] = 0; /* the stack may hold an old request */
    for (;;) {
        char *end = 0;
        while (!(end = strstr(req, "\r\n\r\n"))) {
            if (have >= sizeof req - 1)
                goto out;
            int n = tcp_recv(c, req + have, sizeof req - 1 - have, now_ns() + idle_ns);
            if (n <= 0)
                goto out;
            have += (size_t)n;
            req[have] = 0;
        }
        size_t used = (size_t)(end + 4 - req);
        int keep = strstr(req, "HTTP/1.1") && !strstr(req, "Connection: close");
        if (strncmp(req, "GET ", 4)) {
            reply(c, "405 Method Not Allowed", 0, 0);
            goto out;
        }
        char *path = req + 4, *sp = strchr(path, ' ');
        if (sp)
            *sp = 0;
        int ok;
        served++;
        tcp_cork(c, 1); /* header and body share segments; the tail goes at tcp_cork(c, 0) */
        if (site && serve_file(c, strcmp(path, "/") ? path : "/index.html", keep, &ok)) {
            /* served from the disk */
        } else if (!strncmp(path, "/bytes/", 7)) {
            unsigned long long n = strtoul(path + 7, 0, 10);
            ok = reply(c, "200 OK", n, keep);
            for (unsigned long long i = 0; ok && i < n;) {
                size_t k = n - i < PATTERN_RUN ? (size_t)(n - i) : PATTERN_RUN;
                ok = send_all(c, pattern + i % 26, k);
                i += k;
            }
        } else if (!strcmp(path, "/stats")) {
            char page[900];
            int len = stats_page(page, sizeof page);
            ok = reply(c, "200 OK", (unsigned long long)len, keep) && send_all(c, page, (size_t)len);
        } else if (!strcmp(path, "/")) {
            static const char page[] = "Hello from a denali VM.\n";
            ok = reply(c, "200 OK", sizeof page - 1, keep) && send_all(c, page, sizeof page - 1);
        } else {
            static const char nf[] = "not found\n";
            ok = reply(c, "404 Not Found", sizeof nf - 1, keep) && send_all(c, nf, sizeof nf - 1);
        }
        tcp_cork(c, 0);
        if (!ok) { /* a reply cut short (no memory, a timeout): the client must know */
            tcp_abort(c);
            return;
        }
        if (!keep)
            break;
        memmove(req, req + used, have - used);
        have -= used;
        req[have] = 0;
    }
out:
    tcp_close(c);
}

static int serve_file(int c, const char *path, int keep, int *ok)
{
    fs_file_t f;
    if (fs_open(site, path, &f) != FS_OK)
        return 0;
    *ok = reply(c, "200 OK", fs_size(&f), keep);
    char chunk[2048];
    for (uint64_t off = 0; *ok && off < fs_size(&f);) {
        int64_t n = fs_read(&f, off, chunk, sizeof chunk);
        if (n <= 0) {
            *ok = 0; /* the disk failed mid-file: drop the connection */
            break;
        }
        *ok = send_all(c, chunk, (size_t)n);
        off += (uint64_t)n;
    }
    return 1;
}

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    if (net_start() != NET_OK) {
        printf("httpd: no network (need a NIC and ip=A.B.C.D/N)\n");
        return 1;
    }
    char dn[32] = "site";
    cmdline_get("disk", dn, sizeof dn);
    int fr = fs_mount(dn, &site);
    if (fr == FS_OK)
        printf("httpd: serving %u files from disk %s\n", fs_count(site), dn);
    else if (fr != FS_ENODEV)
        printf("httpd: disk %s: %s\n", dn, fs_strerror(fr));
    if (cmdline_get("idle", dn, sizeof dn) >= 0 && atoi(dn) > 0)
        idle_ns = (uint64_t)atoi(dn) * 1000000000ull;
    for (size_t i = 0; i < sizeof pattern; i++)
        pattern[i] = (char)('a' + i % 26);
    int l = tcp_listen(80);
    uint32_t ip = net_ip();
    printf("httpd: listening on %u.%u.%u.%u:80\n", ip >> 24, (ip >> 16) & 255, (ip >> 8) & 255, ip & 255);
    for (;;) {
        int c = tcp_accept(l, 0);
        if (c < 0)
            continue;
        connections++;
        thread_t *t = thread_create(serve, (void *)(long)c, 8192);
        if (t)
            thread_detach(t);
        else {
            thread_failures++;
            tcp_abort(c); /* no memory for a thread: a RST, not a hang */
        }
    }
}
