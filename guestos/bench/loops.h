/* loops.h: the benchmark loops, shared by the denali images and the Linux binaries. */
#ifndef BENCH_LOOPS_H
#define BENCH_LOOPS_H
#include <stdint.h>

uint32_t loop_alu(uint32_t n);   /* register-only arithmetic */
uint32_t loop_store(uint32_t n); /* n passes of stores over a 64 KiB array */
uint32_t loop_call(uint32_t n);  /* n calls of a small non-inlined function */

#endif
