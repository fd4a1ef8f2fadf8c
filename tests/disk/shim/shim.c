/* shim.c: a stand-in for the guestos library, just enough to run guestos/tests/disk.c
 * and guestos/fs/ in the disk tests before guestos's own library exists. Single
 * threaded: mutexes do nothing; irq_wait idles with IDLE. Not for any other use. */
#include <ilwaco.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

__asm__(".section .text.start\n.globl _start\n_start:\n    call shim_start\n    ud2\n.text\n");

__attribute__((noreturn)) void exit(int status)
{
    struct denali_hc_terminate a = {.status = (uint32_t)status};
    for (;;)
        denali_hc_terminate(&a);
}

void abort(void)
{
    console_write("abort\n", 6);
    exit(134);
}

__attribute__((noreturn, used)) void shim_start(void)
{
    exit(main(0, NULL));
}

/* ---- memory and strings ---- */
void *memcpy(void *dst, const void *src, size_t n)
{
    uint8_t *d = dst;
    const uint8_t *s = src;
    while (n--)
        *d++ = *s++;
    return dst;
}

void *memmove(void *dst, const void *src, size_t n)
{
    uint8_t *d = dst;
    const uint8_t *s = src;
    if (d < s)
        return memcpy(dst, src, n);
    while (n--)
        d[n] = s[n];
    return dst;
}

void *memset(void *dst, int c, size_t n)
{
    uint8_t *d = dst;
    while (n--)
        *d++ = (uint8_t)c;
    return dst;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const uint8_t *x = a, *y = b;
    for (; n; n--, x++, y++)
        if (*x != *y)
            return *x - *y;
    return 0;
}

size_t strlen(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

size_t strnlen(const char *s, size_t max)
{
    size_t n = 0;
    while (n < max && s[n])
        n++;
    return n;
}

int strcmp(const char *a, const char *b)
{
    while (*a && *a == *b)
        a++, b++;
    return (unsigned char)*a - (unsigned char)*b;
}

char *strchr(const char *s, int c)
{
    for (;; s++) {
        if (*s == (char)c)
            return (char *)s;
        if (!*s)
            return NULL;
    }
}

size_t strlcpy(char *dst, const char *src, size_t n)
{
    size_t len = strlen(src);
    if (n) {
        size_t k = len < n - 1 ? len : n - 1;
        memcpy(dst, src, k);
        dst[k] = '\0';
    }
    return len;
}

unsigned long strtoul(const char *s, char **end, int base)
{
    unsigned long v = 0;
    if (base == 0) {
        base = 10;
        if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X'))
            base = 16, s += 2;
    } else if (base == 16 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        s += 2;
    }
    for (;; s++) {
        int d;
        if (*s >= '0' && *s <= '9') d = *s - '0';
        else if (*s >= 'a' && *s <= 'f') d = *s - 'a' + 10;
        else if (*s >= 'A' && *s <= 'F') d = *s - 'A' + 10;
        else break;
        if (d >= base)
            break;
        v = v * (unsigned long)base + (unsigned long)d;
    }
    if (end)
        *end = (char *)s;
    return v;
}

/* ---- heap: a bump allocator (free does nothing) ---- */
static uintptr_t brk_at;

void *malloc(size_t n)
{
    if (!brk_at)
        brk_at = DENALI_VREGS->heap_start;
    uintptr_t p = (brk_at + 15) & ~(uintptr_t)15;
    if (n > DENALI_VREGS->heap_end - p)
        return NULL;
    brk_at = p + n;
    return (void *)p;
}

void *calloc(size_t count, size_t size)
{
    if (size && count > (size_t)-1 / size)
        return NULL;
    void *p = malloc(count * size);
    if (p)
        memset(p, 0, count * size);
    return p;
}

void free(void *p)
{
    (void)p;
}

/* ---- console ---- */
void console_write(const void *buf, size_t len)
{
    struct denali_hc_console_write a = {.buf = (uint32_t)(uintptr_t)buf, .len = (uint32_t)len};
    denali_hc_console_write(&a);
}

struct out {
    char *buf;
    size_t n, len;
};

static void put(struct out *o, char c)
{
    if (o->len + 1 < o->n)
        o->buf[o->len] = c;
    o->len++;
}

int vsnprintf(char *buf, size_t n, const char *fmt, va_list ap)
{
    struct out o = {buf, n, 0};
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            put(&o, *fmt);
            continue;
        }
        fmt++;
        int zero = 0, width = 0;
        if (*fmt == '0')
            zero = 1, fmt++;
        while (*fmt >= '0' && *fmt <= '9')
            width = width * 10 + (*fmt++ - '0');
        char tmp[16];
        const char *s = tmp;
        int len = 0, neg = 0;
        unsigned v;
        switch (*fmt) {
        case 's':
            s = va_arg(ap, const char *);
            len = (int)strlen(s);
            break;
        case 'c':
            tmp[0] = (char)va_arg(ap, int);
            len = 1;
            break;
        case 'd':
        case 'u':
        case 'x': {
            int base = *fmt == 'x' ? 16 : 10;
            if (*fmt == 'd') {
                int d = va_arg(ap, int);
                neg = d < 0;
                v = neg ? 0u - (unsigned)d : (unsigned)d;
            } else {
                v = va_arg(ap, unsigned);
            }
            char *e = tmp + sizeof tmp;
            do {
                *--e = "0123456789abcdef"[v % (unsigned)base];
                v /= (unsigned)base;
            } while (v);
            s = e;
            len = (int)(tmp + sizeof tmp - e);
            break;
        }
        default:
            tmp[0] = *fmt;
            len = 1;
        }
        if (neg)
            put(&o, '-'), width--;
        for (int i = len; i < width; i++)
            put(&o, zero ? '0' : ' ');
        for (int i = 0; i < len; i++)
            put(&o, s[i]);
    }
    if (o.n)
        o.buf[o.len < o.n ? o.len : o.n - 1] = '\0';
    return (int)o.len;
}

int printf(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    console_write(buf, (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1);
    return n;
}

/* ---- command line ---- */
int cmdline_get(const char *key, char *out, size_t n)
{
    const char *p = DENALI_CMDLINE;
    size_t klen = strlen(key);
    while (*p) {
        while (*p == ' ')
            p++;
        const char *w = p;
        while (*p && *p != ' ')
            p++;
        if ((size_t)(p - w) > klen && !memcmp(w, key, klen) && w[klen] == '=') {
            const char *v = w + klen + 1;
            int len = (int)(p - v);
            if (n) {
                size_t k = (size_t)len < n - 1 ? (size_t)len : n - 1;
                memcpy(out, v, k);
                out[k] = '\0';
            }
            return len;
        }
    }
    return -1;
}

/* ---- time, interrupts, "threads" ---- */
uint64_t now_ns(void)
{
    return DENALI_VREGS->time_ns;
}

static uint32_t stash; /* interrupt bits no waiter has taken yet */

uint32_t irq_wait(uint32_t mask, uint64_t deadline_ns)
{
    for (;;) {
        if (stash & mask) {
            uint32_t got = stash & mask;
            stash &= ~got;
            return got;
        }
        struct denali_hc_idle a = {.deadline_ns = deadline_ns};
        denali_hc_idle(&a);
        stash |= a.pending;
        if (!(stash & mask) && deadline_ns && a.now_ns >= deadline_ns)
            return 0;
    }
}

void thread_sleep_ns(uint64_t ns)
{
    uint64_t until = now_ns() + ns;
    while (now_ns() < until)
        irq_wait(0, until);
}

void mutex_init(mutex_t *m) { m->owner = NULL; m->waiters = NULL; }
void mutex_lock(mutex_t *m) { (void)m; }
void mutex_unlock(mutex_t *m) { (void)m; }
void cond_wait(cond_t *c, mutex_t *m) { (void)c; (void)m; irq_wait(DENALI_IRQ_ALL, now_ns() + 1000000); }
void cond_broadcast(cond_t *c) { (void)c; }
