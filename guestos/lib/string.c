/* string.c: memory and string functions (string.h). */
#include <stdint.h>
#include <string.h>

/* x86 allows unaligned loads and stores: copies and compares go a word at a time
 * whatever the alignment. */
typedef uint32_t __attribute__((may_alias, aligned(1))) u32u;

void *memcpy(void *dst, const void *src, size_t n)
{
    char *d = dst;
    const char *s = src;
    while (n >= 16) {
        uint32_t a = *(const u32u *)s, b = *(const u32u *)(s + 4);
        uint32_t c = *(const u32u *)(s + 8), e = *(const u32u *)(s + 12);
        *(u32u *)d = a;
        *(u32u *)(d + 4) = b;
        *(u32u *)(d + 8) = c;
        *(u32u *)(d + 12) = e;
        d += 16;
        s += 16;
        n -= 16;
    }
    while (n >= 4) {
        *(u32u *)d = *(const u32u *)s;
        d += 4;
        s += 4;
        n -= 4;
    }
    while (n--)
        *d++ = *s++;
    return dst;
}

void *memmove(void *dst, const void *src, size_t n)
{
    char *d = dst;
    const char *s = src;
    if (d == s || n == 0)
        return dst;
    if (d < s || d >= s + n)
        return memcpy(dst, src, n);
    while (n--)
        d[n] = s[n];
    return dst;
}

void *memset(void *dst, int c, size_t n)
{
    unsigned char *d = dst;
    uint32_t v = (unsigned char)c;
    v |= v << 8;
    v |= v << 16;
    while (n && ((uintptr_t)d & 3)) {
        *d++ = (unsigned char)c;
        n--;
    }
    while (n >= 4) {
        *(uint32_t *)d = v;
        d += 4;
        n -= 4;
    }
    while (n--)
        *d++ = (unsigned char)c;
    return dst;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const unsigned char *x = a, *y = b;
    size_t i = 0;
    while (i + 4 <= n && *(const u32u *)(x + i) == *(const u32u *)(y + i))
        i += 4;
    for (; i < n; i++)
        if (x[i] != y[i])
            return x[i] - y[i];
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
    while (*a && *a == *b) {
        a++;
        b++;
    }
    return (unsigned char)*a - (unsigned char)*b;
}

int strncmp(const char *a, const char *b, size_t n)
{
    for (; n; n--, a++, b++) {
        if (*a != *b || !*a)
            return (unsigned char)*a - (unsigned char)*b;
    }
    return 0;
}

char *strchr(const char *s, int c)
{
    for (;; s++) {
        if (*s == (char)c)
            return (char *)s;
        if (!*s)
            return 0;
    }
}

char *strrchr(const char *s, int c)
{
    const char *last = 0;
    for (;; s++) {
        if (*s == (char)c)
            last = s;
        if (!*s)
            return (char *)last;
    }
}

char *strstr(const char *h, const char *n)
{
    size_t ln = strlen(n);
    if (!ln)
        return (char *)h;
    for (; *h; h++)
        if (*h == *n && !strncmp(h, n, ln))
            return (char *)h;
    return 0;
}

size_t strlcpy(char *dst, const char *src, size_t n)
{
    size_t len = strlen(src);
    if (n) {
        size_t c = len < n - 1 ? len : n - 1;
        memcpy(dst, src, c);
        dst[c] = 0;
    }
    return len;
}
