/* loops.c: benchmark loops; built once for denali and once for Linux (qemu-i386). */
#include "loops.h"

uint32_t loop_alu(uint32_t n)
{
    uint32_t x = 12345, y = 0;
    for (uint32_t i = 0; i < n; i++) {
        x = x * 1103515245u + 12345u;
        y ^= x >> 7;
        y += i;
    }
    return x ^ y;
}

static uint32_t arena[16384];

uint32_t loop_store(uint32_t n)
{
    uint32_t sum = 0;
    for (uint32_t pass = 0; pass < n; pass++) {
        for (uint32_t i = 0; i < 16384; i++)
            arena[i] = i + pass;
        sum += arena[pass & 16383];
    }
    return sum;
}

__attribute__((noinline)) static uint32_t leaf(uint32_t a, uint32_t b)
{
    __asm__ volatile("" ::: "memory");
    return (a << 1) ^ b;
}

uint32_t loop_call(uint32_t n)
{
    uint32_t acc = 1;
    for (uint32_t i = 0; i < n; i++)
        acc = leaf(acc, i);
    return acc;
}
