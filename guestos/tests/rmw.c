/* test-rmw: reps=N rounds of a hash over a table whose state lives in memory and is
 * updated by read-modify-write instructions (add/xor/xchg to memory); prints the hash.
 * Preempting the VM must not change the result: an instruction that ran twice would. */
#include <ilwaco.h>
#include <stdio.h>
#include <stdlib.h>

static uint8_t buf[30000];
static uint32_t T[256];
static volatile uint32_t st[4];

static uint32_t rol(uint32_t x, int n) { return (x << n) | (x >> (32 - n)); }

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    char v[16];
    int reps = cmdline_get("reps", v, sizeof v) >= 0 ? atoi(v) : 4;
    uint32_t s = 12345;
    for (int i = 0; i < 256; i++) { s = s * 1103515245u + 12345u; T[i] = s; }
    for (uint32_t i = 0; i < sizeof buf; i++) { s = s * 1103515245u + 12345u; buf[i] = (uint8_t)(s >> 24); }
    st[0] = 0x67452301; st[1] = 0xefcdab89; st[2] = 0x98badcfe; st[3] = 0x10325476;
    for (int rep = 0; rep < reps; rep++)
        for (uint32_t i = 0; i + 64 <= sizeof buf; i += 64) {
            const uint32_t *w = (const uint32_t *)(buf + i);
            for (int j = 0; j < 16; j++) {
                uint32_t f = (st[1] & st[2]) | (~st[1] & st[3]);
                uint32_t x = rol(st[0] + f + T[(j * 7 + buf[i + j]) & 255] + w[j], (j % 4) * 5 + 7);
                __asm__ volatile("addl %1, %0" : "+m"(st[1]) : "r"(x));           /* read-modify-write */
                __asm__ volatile("xorl %1, %0" : "+m"(st[0]) : "r"(st[3] ^ st[0]));  /* st[0] = st[3] */
                uint32_t t = st[2];
                __asm__ volatile("xchgl %0, %1" : "+r"(t), "+m"(st[3]));           /* st[3] = st[2] */
                st[2] = st[1] - x;
            }
        }
    printf("hash %08x %08x %08x %08x\n", st[0], st[1], st[2], st[3]);
    return 0;
}
