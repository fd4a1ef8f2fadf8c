/* printf.c: formatted output (stdio.h). One formatter (__fmt) feeds both the string and
 * the console versions; printf sends its output in as few console writes as it can. */
#include <stdarg.h>
#include <stdint.h>
#include <string.h>
#include <ilwaco.h>
#include "internal.h"

static void emit_pad(void (*emit)(void *, const char *, size_t), void *ctx, char c, int n)
{
    char buf[16];
    memset(buf, c, sizeof buf);
    while (n > 0) {
        int k = n < 16 ? n : 16;
        emit(ctx, buf, (size_t)k);
        n -= k;
    }
}

int __fmt(void (*emit)(void *, const char *, size_t), void *ctx, const char *fmt, va_list ap)
{
    int total = 0;
    while (*fmt) {
        const char *p = fmt;
        while (*p && *p != '%')
            p++;
        if (p != fmt) {
            emit(ctx, fmt, (size_t)(p - fmt));
            total += (int)(p - fmt);
            fmt = p;
        }
        if (!*fmt)
            break;
        fmt++; /* '%' */
        int left = 0, zero = 0, width = 0, prec = -1, lng = 0;
        for (;; fmt++) {
            if (*fmt == '-')
                left = 1;
            else if (*fmt == '0')
                zero = 1;
            else
                break;
        }
        if (*fmt == '*') {
            width = va_arg(ap, int);
            fmt++;
        } else {
            while (*fmt >= '0' && *fmt <= '9')
                width = width * 10 + (*fmt++ - '0');
        }
        if (*fmt == '.') {
            fmt++;
            prec = 0;
            if (*fmt == '*') {
                prec = va_arg(ap, int);
                fmt++;
            } else {
                while (*fmt >= '0' && *fmt <= '9')
                    prec = prec * 10 + (*fmt++ - '0');
            }
        }
        for (;; fmt++) {
            if (*fmt == 'l')
                lng++;
            else if (*fmt == 'z')
                lng = 1;
            else if (*fmt == 'h')
                ;
            else
                break;
        }
        char conv = *fmt ? *fmt++ : 0;
        char num[24];
        const char *s = num;
        int len = 0, neg = 0;
        unsigned base = 10;
        uint64_t v = 0;
        const char *prefix = "";
        switch (conv) {
        case 'd':
        case 'i': {
            int64_t sv = lng >= 2 ? va_arg(ap, long long) : lng ? va_arg(ap, long) : va_arg(ap, int);
            neg = sv < 0;
            v = neg ? -(uint64_t)sv : (uint64_t)sv;
            goto number;
        }
        case 'p':
            v = (uintptr_t)va_arg(ap, void *);
            base = 16;
            prefix = "0x";
            goto format;
        case 'x':
        case 'X':
            base = 16;
            goto unsig;
        case 'o':
            base = 8;
            goto unsig;
        case 'u':
        unsig:
            v = lng >= 2 ? va_arg(ap, unsigned long long) : lng ? va_arg(ap, unsigned long) : va_arg(ap, unsigned);
        number:
        format: {
            const char *digits = conv == 'X' ? "0123456789ABCDEF" : "0123456789abcdef";
            char *e = num + sizeof num;
            char *q = e;
            do {
                *--q = digits[v % base];
                v /= base;
            } while (v);
            while (prec >= 0 && e - q < prec && q > num)
                *--q = '0';
            s = q;
            len = (int)(e - q);
            break;
        }
        case 'c':
            num[0] = (char)va_arg(ap, int);
            len = 1;
            break;
        case 's':
            s = va_arg(ap, const char *);
            if (!s)
                s = "(null)";
            len = prec >= 0 ? (int)strnlen(s, (size_t)prec) : (int)strlen(s);
            break;
        case '%':
            num[0] = '%';
            len = 1;
            break;
        default: /* unknown conversion: print it as is */
            num[0] = '%';
            num[1] = conv;
            len = conv ? 2 : 1;
            break;
        }
        int plen = (int)strlen(prefix) + neg;
        int pad = width - len - plen;
        if (!left && !(zero && prec < 0 && conv != 's' && conv != 'c'))
            emit_pad(emit, ctx, ' ', pad);
        if (neg)
            emit(ctx, "-", 1);
        if (*prefix)
            emit(ctx, prefix, strlen(prefix));
        if (!left && zero && prec < 0 && conv != 's' && conv != 'c')
            emit_pad(emit, ctx, '0', pad);
        emit(ctx, s, (size_t)len);
        if (left)
            emit_pad(emit, ctx, ' ', pad);
        total += len + plen + (pad > 0 ? pad : 0);
    }
    return total;
}

struct strbuf {
    char *buf;
    size_t cap, len;
};

static void str_emit(void *ctx, const char *s, size_t n)
{
    struct strbuf *b = ctx;
    if (b->cap && b->len < b->cap - 1) {
        size_t room = b->cap - 1 - b->len;
        size_t k = n < room ? n : room;
        memcpy(b->buf + b->len, s, k);
    }
    b->len += n;
}

int vsnprintf(char *buf, size_t n, const char *fmt, va_list ap)
{
    struct strbuf b = {buf, n, 0};
    int r = __fmt(str_emit, &b, fmt, ap);
    if (n)
        buf[b.len < n ? b.len : n - 1] = 0;
    return r;
}

int snprintf(char *buf, size_t n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int r = vsnprintf(buf, n, fmt, ap);
    va_end(ap);
    return r;
}

struct conbuf {
    char buf[1024];
    size_t len;
};

static void con_emit(void *ctx, const char *s, size_t n)
{
    struct conbuf *b = ctx;
    while (n) {
        if (b->len == sizeof b->buf) {
            console_write(b->buf, b->len);
            b->len = 0;
        }
        size_t k = sizeof b->buf - b->len;
        if (k > n)
            k = n;
        memcpy(b->buf + b->len, s, k);
        b->len += k;
        s += k;
        n -= k;
    }
}

int vprintf(const char *fmt, va_list ap)
{
    struct conbuf b;
    b.len = 0;
    int r = __fmt(con_emit, &b, fmt, ap);
    if (b.len)
        console_write(b.buf, b.len);
    return r;
}

int printf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int r = vprintf(fmt, ap);
    va_end(ap);
    return r;
}

int puts(const char *s)
{
    return printf("%s\n", s);
}

int putchar(int c)
{
    char ch = (char)c;
    console_write(&ch, 1);
    return (unsigned char)c;
}
