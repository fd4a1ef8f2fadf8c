/* The Zipf HTTP load of lanload.py's `zipf` mode, in C: the same requests, the same
 * host choice, the same keep-alive pool and the same JSON lines, for a client that
 * must not take the CPU the server under test needs (bench_host.py runs it on the two
 * cores the kernels share; lanload.py in Python costs about a third of a core at
 * 4,500 requests/s, this about a tenth of that).
 *
 * Usage: zipfload zipf FIRST COUNT [--seconds S] [--conc C] [--pool P] [--alpha A]
 *                                  [--report R] [--port N]
 *
 * --conc workers each repeat: draw a host from a Zipf distribution over the COUNT
 * addresses from FIRST (rank r has weight 1/(r+1)^A; FIRST is the most popular), take
 * an idle keep-alive connection to it from the pool or open one, send
 * `GET /bytes/2258 HTTP/1.1` (to port 80 unless --port), read the head and the
 * Content-Length bytes of body, and check the status (200) and the body's length
 * (2,258). A finished connection goes back to the pool: at most 16 idle per host, at
 * most P in all (beyond that the least recently used host's oldest is closed). Any
 * step that fails or takes more than 20 s counts as an error (and closes the
 * connection), except at the end of the run.
 *
 * Every R seconds a line {"t", "req_s", "ok", "err", "p50_ms", "p99_ms", "open"}; at
 * the end {"summary": true, "requests", "errors", "seconds", "req_s",
 * "connections_opened", "reasons"}: the lines lanload.py prints, so either client
 * feeds the same parser. Built by bench_host.py with the machine's gcc (never
 * committed as a binary). */

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define DOC 2258
#define PER_HOST 16
#define TIMEOUT_S 20.0
#define BUF 8192

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* ---- why requests failed, counted by name (lanload's "reasons") ---- */

#define MAX_REASONS 32
static char reason_name[MAX_REASONS][64];
static long reason_count[MAX_REASONS];
static int reasons;

static void failed(const char *stage, const char *why) {
    char key[64];
    snprintf(key, sizeof key, "%s:%s", stage, why);
    for (int i = 0; i < reasons; i++)
        if (strcmp(reason_name[i], key) == 0) {
            reason_count[i]++;
            return;
        }
    if (reasons < MAX_REASONS) {
        strcpy(reason_name[reasons], key);
        reason_count[reasons++] = 1;
    }
}

/* ---- the pool of idle keep-alive connections ---- */

struct host {
    int idle[PER_HOST]; /* fds, oldest first */
    int n;
    double used; /* when a connection last came back: the LRU order */
};

static struct host *hostv;
static int host_count;
static int pool_size, pool_total;
static long opened;

static int pool_take(int h) {
    struct host *p = &hostv[h];
    if (p->n == 0)
        return -1;
    pool_total--;
    return p->idle[--p->n];
}

static void pool_give(int h, int fd, double t) {
    struct host *p = &hostv[h];
    p->used = t;
    if (p->n >= PER_HOST) {
        close(fd);
        return;
    }
    p->idle[p->n++] = fd;
    pool_total++;
    while (pool_total > pool_size) {
        int lru = -1;
        for (int i = 0; i < host_count; i++) /* rare: only once the pool is full */
            if (hostv[i].n && (lru < 0 || hostv[i].used < hostv[lru].used))
                lru = i;
        struct host *q = &hostv[lru];
        close(q->idle[0]);
        memmove(q->idle, q->idle + 1, (size_t)(q->n - 1) * sizeof(int));
        q->n--;
        pool_total--;
    }
}

/* ---- the workers ---- */

enum state { CONNECTING, SENDING, READING };

struct worker {
    int fd, host;
    enum state state;
    double started, deadline;
    char buf[BUF];
    int have;      /* bytes in buf */
    long body;     /* body bytes still to read once the head is in, or -1 */
    int sent;      /* request bytes sent */
    char req[128];
    int req_len;
};

static struct worker *workers;
static int epfd;
static uint32_t in_addr_first;
static int port = 80;
static double *cdf;
static uint64_t rng = 0x9E3779B97F4A7C15ull;

static double uniform(void) { /* xorshift64*, [0, 1) */
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return (double)((rng * 2685821657736338717ull) >> 11) / 9007199254740992.0;
}

static int draw(void) {
    double x = uniform() * cdf[host_count - 1];
    int lo = 0, hi = host_count - 1;
    while (lo < hi) { /* the first rank whose cumulative weight reaches x */
        int mid = (lo + hi) / 2;
        if (cdf[mid] < x)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static long ok_window, err_window, ok_total, err_total;
static double *lat;
static long lat_n, lat_cap;
static double until;

static void watch(struct worker *w, uint32_t events, int op) {
    struct epoll_event ev = {.events = events, .data.ptr = w};
    if (epoll_ctl(epfd, op, w->fd, &ev) < 0) {
        perror("epoll_ctl");
        exit(1);
    }
}

static void begin(struct worker *w);

static void fail(struct worker *w, const char *stage, const char *why) {
    if (w->fd >= 0) {
        close(w->fd); /* also leaves the epoll set */
        w->fd = -1;
    }
    if (now() < until) {
        failed(stage, why);
        err_window++;
    }
    /* the main loop gives the worker its next request */
}

static void send_request(struct worker *w) {
    while (w->sent < w->req_len) {
        ssize_t n = send(w->fd, w->req + w->sent, (size_t)(w->req_len - w->sent), MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN) {
                w->state = SENDING;
                watch(w, EPOLLOUT, EPOLL_CTL_MOD);
                return;
            }
            fail(w, "get", strerrorname_np(errno));
            return;
        }
        w->sent += (int)n;
    }
    w->state = READING;
    watch(w, EPOLLIN, EPOLL_CTL_MOD);
}

/* A new request by worker w: a host, a connection, the request on its way. */
static void begin(struct worker *w) {
    double t = now();
    if (t >= until) {
        w->fd = -1;
        return;
    }
    w->host = draw();
    w->started = t;
    w->deadline = t + TIMEOUT_S;
    w->have = 0;
    w->body = -1;
    w->sent = 0;
    struct in_addr a = {.s_addr = htonl(in_addr_first + (uint32_t)w->host)};
    w->req_len = snprintf(w->req, sizeof w->req, "GET /bytes/%d HTTP/1.1\r\nHost: %s\r\n\r\n", DOC,
                          inet_ntoa(a));
    w->fd = pool_take(w->host);
    if (w->fd >= 0) {
        watch(w, EPOLLIN, EPOLL_CTL_ADD);
        send_request(w);
        return;
    }
    w->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (w->fd < 0) {
        fail(w, "connect", strerrorname_np(errno));
        return;
    }
    int one = 1;
    setsockopt(w->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr = a};
    opened++;
    if (connect(w->fd, (struct sockaddr *)&sa, sizeof sa) == 0) {
        watch(w, EPOLLIN, EPOLL_CTL_ADD);
        send_request(w);
    } else if (errno == EINPROGRESS) {
        w->state = CONNECTING;
        watch(w, EPOLLOUT, EPOLL_CTL_ADD);
    } else {
        fail(w, "connect", strerrorname_np(errno));
    }
}

static void finished(struct worker *w) {
    double t = now();
    if (lat_n == lat_cap) {
        lat_cap = lat_cap ? lat_cap * 2 : 65536;
        lat = realloc(lat, (size_t)lat_cap * sizeof *lat);
        if (!lat) {
            perror("realloc");
            exit(1);
        }
    }
    lat[lat_n++] = t - w->started;
    ok_window++;
    epoll_ctl(epfd, EPOLL_CTL_DEL, w->fd, NULL);
    pool_give(w->host, w->fd, t);
    w->fd = -1;
    begin(w);
}

/* The head is in buf[0..end): status 200 and a Content-Length, or an error. */
static int parse_head(struct worker *w, int end) {
    if (end < 12 || memcmp(w->buf, "HTTP/1.1 200", 12) != 0)
        return -1;
    char *cl = memmem(w->buf, (size_t)end, "Content-Length: ", 16);
    if (!cl)
        return -1;
    long length = strtol(cl + 16, NULL, 10);
    if (length != DOC)
        return -1;
    w->body = length - (w->have - end); /* body bytes that came with the head count */
    w->have = 0;
    return 0;
}

static void readable(struct worker *w) {
    for (;;) {
        ssize_t n = recv(w->fd, w->buf + w->have, (size_t)(BUF - w->have), 0);
        if (n < 0) {
            if (errno == EAGAIN)
                return;
            fail(w, "get", strerrorname_np(errno));
            return;
        }
        if (n == 0) {
            fail(w, "get", "IncompleteReadError");
            return;
        }
        if (w->body >= 0) { /* body bytes: counted, not kept */
            w->body -= n;
        } else {
            int before = w->have;
            w->have += (int)n;
            int from = before > 3 ? before - 3 : 0;
            char *end = memmem(w->buf + from, (size_t)(w->have - from), "\r\n\r\n", 4);
            if (!end) {
                if (w->have == BUF) {
                    fail(w, "get", "LimitOverrunError");
                    return;
                }
                continue;
            }
            if (parse_head(w, (int)(end + 4 - w->buf)) < 0) {
                fail(w, "get", "ValueError(head)");
                return;
            }
        }
        if (w->body == 0) {
            finished(w);
            return;
        }
        if (w->body < 0) {
            fail(w, "get", "ValueError(body too long)");
            return;
        }
    }
}

static void ready(struct worker *w) {
    if (w->fd < 0)
        return;
    if (w->state == CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(w->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
            fail(w, "connect", strerrorname_np(err));
            return;
        }
        send_request(w);
    } else if (w->state == SENDING) {
        send_request(w);
    } else {
        readable(w);
    }
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void report(double t, double t0, double last) {
    qsort(lat, (size_t)lat_n, sizeof *lat, by_value);
    printf("{\"t\": %.2f, \"req_s\": %.1f, \"ok\": %ld, \"err\": %ld, ", t - t0,
           ok_window / (t - last), ok_window, err_window);
    if (lat_n)
        printf("\"p50_ms\": %.2f, \"p99_ms\": %.2f, ", lat[lat_n * 50 / 100] * 1000,
               lat[lat_n * 99 / 100] * 1000);
    else
        printf("\"p50_ms\": null, \"p99_ms\": null, ");
    printf("\"open\": %d}\n", pool_total);
    fflush(stdout);
    ok_total += ok_window;
    err_total += err_window;
    ok_window = err_window = 0;
    lat_n = 0;
}

static void usage(void) {
    fprintf(stderr, "usage: zipfload zipf FIRST COUNT [--seconds S] [--conc C] [--pool P] "
                    "[--alpha A] [--report R] [--port N]\n");
    exit(2);
}

int main(int argc, char **argv) {
    double seconds = 10, alpha = 1.0, every = 5.0;
    int conc = 64;
    pool_size = 512;
    if (argc < 4 || strcmp(argv[1], "zipf") != 0)
        usage();
    struct in_addr first;
    if (inet_aton(argv[2], &first) == 0)
        usage();
    in_addr_first = ntohl(first.s_addr);
    host_count = atoi(argv[3]);
    if (host_count <= 0)
        usage();
    for (int i = 4; i < argc; i++) {
        if (i + 1 >= argc)
            usage();
        const char *opt = argv[i], *val = argv[++i];
        if (!strcmp(opt, "--seconds"))
            seconds = atof(val);
        else if (!strcmp(opt, "--conc"))
            conc = atoi(val) > 0 ? atoi(val) : 64;
        else if (!strcmp(opt, "--pool"))
            pool_size = atoi(val);
        else if (!strcmp(opt, "--alpha"))
            alpha = atof(val);
        else if (!strcmp(opt, "--report"))
            every = atof(val);
        else if (!strcmp(opt, "--port"))
            port = atoi(val);
        else
            usage();
    }
    hostv = calloc((size_t)host_count, sizeof *hostv);
    cdf = malloc((size_t)host_count * sizeof *cdf);
    workers = calloc((size_t)conc, sizeof *workers);
    if (!hostv || !cdf || !workers) {
        perror("malloc");
        return 1;
    }
    double acc = 0;
    for (int r = 0; r < host_count; r++) {
        acc += 1.0 / pow(r + 1, alpha);
        cdf[r] = acc;
    }
    epfd = epoll_create1(0);
    double t0 = now(), last = t0, next = t0 + every;
    until = t0 + seconds;
    for (int i = 0; i < conc; i++) {
        workers[i].fd = -1;
        begin(&workers[i]);
    }
    struct epoll_event evs[256];
    for (;;) {
        double t = now();
        if (t >= next) {
            report(t, t0, last);
            last = t;
            next += every;
        }
        int live = 0;
        for (int i = 0; i < conc; i++) {
            struct worker *w = &workers[i];
            if (w->fd < 0 && t < until)
                begin(w); /* after a failure */
            if (w->fd < 0)
                continue;
            if (t >= until) { /* cut off by the end of the run, not failed */
                close(w->fd);
                w->fd = -1;
                continue;
            }
            if (t >= w->deadline)
                fail(w, w->state == CONNECTING ? "connect" : "get", "TimeoutError");
            live += w->fd >= 0;
        }
        if (!live && t >= until)
            break;
        double wait = next < until ? next - t : until - t;
        int ms = wait > 0.1 ? 100 : (int)(wait * 1000) + 1;
        int n = epoll_wait(epfd, evs, 256, ms);
        for (int i = 0; i < n; i++)
            ready(evs[i].data.ptr);
    }
    double wall = now() - t0;
    ok_total += ok_window;
    err_total += err_window;
    printf("{\"summary\": true, \"requests\": %ld, \"errors\": %ld, \"seconds\": %.3f, "
           "\"req_s\": %.1f, \"connections_opened\": %ld, \"reasons\": {",
           ok_total, err_total, wall, ok_total / wall, opened);
    for (int i = 0; i < reasons; i++)
        printf("%s\"%s\": %ld", i ? ", " : "", reason_name[i], reason_count[i]);
    printf("}}\n");
    return 0;
}
