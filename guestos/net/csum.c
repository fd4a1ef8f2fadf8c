/* csum.c: the Internet checksum (RFC 1071) a word at a time, alone or folded into a copy.
 *
 * Partial sums are kept in the machine's (little-endian) byte order: the sum of 16-bit
 * words is independent of byte order up to a final byte swap (RFC 1071 2(B)), so 32-bit
 * words are added into a 64-bit accumulator (add/adc on i386) and folded at the end.
 * Sums of pieces that start at an odd offset of the summed whole are swapped before they
 * are added (csum_shift). x86 allows unaligned loads, so no alignment fix-up is needed. */
#include "internal.h"

typedef uint32_t __attribute__((may_alias, aligned(1))) u32u;
typedef uint16_t __attribute__((may_alias, aligned(1))) u16u;

static inline uint32_t fold64(uint64_t acc)
{
    acc = (acc & 0xffffffffu) + (acc >> 32);
    acc = (acc & 0xffffffffu) + (acc >> 32);
    uint32_t s = (uint32_t)acc;
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    return s;
}

uint32_t csum_add(const void *data, size_t len, uint32_t sum)
{
    const uint8_t *p = data;
    uint64_t acc = sum;
    while (len >= 16) {
        acc += *(const u32u *)p;
        acc += *(const u32u *)(p + 4);
        acc += *(const u32u *)(p + 8);
        acc += *(const u32u *)(p + 12);
        p += 16;
        len -= 16;
    }
    while (len >= 4) {
        acc += *(const u32u *)p;
        p += 4;
        len -= 4;
    }
    if (len >= 2) {
        acc += *(const u16u *)p;
        p += 2;
        len -= 2;
    }
    if (len)
        acc += *p;
    return fold64(acc);
}

uint32_t csum_copy(void *dst, const void *src, size_t len, uint32_t sum)
{
    uint8_t *d = dst;
    const uint8_t *s = src;
    uint64_t acc = sum;
    while (len >= 16) {
        uint32_t a = *(const u32u *)s, b = *(const u32u *)(s + 4);
        uint32_t c = *(const u32u *)(s + 8), e = *(const u32u *)(s + 12);
        *(u32u *)d = a;
        *(u32u *)(d + 4) = b;
        *(u32u *)(d + 8) = c;
        *(u32u *)(d + 12) = e;
        acc += a;
        acc += b;
        acc += c;
        acc += e;
        s += 16;
        d += 16;
        len -= 16;
    }
    while (len >= 4) {
        uint32_t a = *(const u32u *)s;
        *(u32u *)d = a;
        acc += a;
        s += 4;
        d += 4;
        len -= 4;
    }
    if (len >= 2) {
        uint16_t a = *(const u16u *)s;
        *(u16u *)d = a;
        acc += a;
        s += 2;
        d += 2;
        len -= 2;
    }
    if (len) {
        *d = *s;
        acc += *s;
    }
    return fold64(acc);
}

uint32_t csum_shift(uint32_t part, size_t offset)
{
    part = (part & 0xffff) + (part >> 16);
    part = (part & 0xffff) + (part >> 16);
    return (offset & 1) ? ((part & 0xff) << 8 | part >> 8) : part;
}

uint32_t csum_combine(uint32_t a, uint32_t b)
{
    uint32_t s = a + b;
    if (s < a)
        s++;
    s = (s & 0xffff) + (s >> 16);
    return (s & 0xffff) + (s >> 16);
}

uint16_t csum_finish(uint32_t sum)
{
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    uint16_t c = (uint16_t)~sum;
    return (uint16_t)(c << 8 | c >> 8); /* network order, as put16 wants it */
}

uint32_t csum_pseudo(uint32_t src, uint32_t dst, uint8_t proto, size_t len)
{
    /* the pseudo header's words in network order, summed, then swapped into our order */
    uint32_t be = (src >> 16) + (src & 0xffff) + (dst >> 16) + (dst & 0xffff) + proto + (uint32_t)len;
    be = (be & 0xffff) + (be >> 16);
    be = (be & 0xffff) + (be >> 16);
    return (be & 0xff) << 8 | be >> 8;
}

uint16_t ip_checksum(const void *data, size_t len, uint32_t initial)
{
    uint32_t init = initial;
    init = (init & 0xffff) + (init >> 16);
    init = (init & 0xffff) + (init >> 16);
    init = (init & 0xff) << 8 | init >> 8;
    return csum_finish(csum_add(data, len, init));
}
