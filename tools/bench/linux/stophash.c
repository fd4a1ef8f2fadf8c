/* stophash.c: a table-driven hash loop with no system calls, for
 * unicorn_async_stop.py: its result must not depend on where the engine was stopped. */
#include <stdint.h>
static uint8_t buf[30000];
static uint32_t T[256];
static uint32_t rol(uint32_t x, int n) { return (x << n) | (x >> (32 - n)); }
uint32_t out[4];
void _start(void)
{
    uint32_t s = 12345;
    for (int i = 0; i < 256; i++) { s = s * 1103515245u + 12345u; T[i] = s; }
    for (uint32_t i = 0; i < sizeof buf; i++) { s = s * 1103515245u + 12345u; buf[i] = (uint8_t)(s >> 24); }
    uint32_t a = 0x67452301, b = 0xefcdab89, c = 0x98badcfe, d = 0x10325476;
    for (int rep = 0; rep < 4; rep++)
        for (uint32_t i = 0; i + 64 <= sizeof buf; i += 64) {
            const uint32_t *w = (const uint32_t *)(buf + i);
            for (int j = 0; j < 16; j++) {
                uint32_t f = (b & c) | (~b & d);
                uint32_t t = d; d = c; c = b;
                b = b + rol(a + f + T[(j * 7 + buf[i + j]) & 255] + w[j], (j % 4) * 5 + 7);
                a = t;
            }
        }
    out[0] = a; out[1] = b; out[2] = c; out[3] = d;
    __asm__ volatile("int $0x80");
    for (;;) ;
}
