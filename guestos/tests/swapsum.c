/* test-swapsum: kib=N rounds=R: fills N KiB with a pattern, then R rounds of checksum +
 * mutate, sleeping 1 ms between rounds (a chance to be swapped out); prints the sum. */
#include <ilwaco.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    char v[16];
    unsigned kib = cmdline_get("kib", v, sizeof v) >= 0 ? (unsigned)atoi(v) : 256;
    unsigned rounds = cmdline_get("rounds", v, sizeof v) >= 0 ? (unsigned)atoi(v) : 20;
    unsigned n = kib * 256;
    uint32_t *a = malloc(n * sizeof *a);
    if (!a) {
        printf("FAIL: no memory\n");
        return 1;
    }
    uint32_t x = 2463534242u, sum = 0;
    for (unsigned i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        a[i] = x;
    }
    for (unsigned r = 0; r < rounds; r++) {
        for (unsigned i = 0; i < n; i++) {
            sum = (sum << 5) + (sum >> 27) + a[i];
            a[i] += sum ^ r;
        }
        thread_sleep_ns(1000000);
    }
    printf("checksum=%08x rounds=%u\n", sum, rounds);
    return 0;
}
