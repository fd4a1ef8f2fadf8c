/* test-dirty: kib=N rate=P: writes every page of N KiB of heap once, then for ever dirties
 * P pages (cycling through the N KiB) and sleeps 1 ms: a memory-writing load of about
 * P pages per ms for the migration benchmark. Prints "ready" after the first pass. */
#include <ilwaco.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    char v[16];
    unsigned kib = cmdline_get("kib", v, sizeof v) >= 0 ? (unsigned)atoi(v) : 1024;
    unsigned rate = cmdline_get("rate", v, sizeof v) >= 0 ? (unsigned)atoi(v) : 0;
    unsigned pages = kib / 4;
    volatile unsigned char *p = pages ? malloc(pages * 4096u) : 0;
    if (pages && !p) {
        printf("FAIL: no memory for %u KiB\n", kib);
        return 1;
    }
    for (unsigned i = 0; i < pages; i++)
        p[i * 4096u] = 1;
    printf("ready\n");
    unsigned at = 0, pass = 0;
    for (;;) {
        for (unsigned i = 0; i < rate && pages; i++) {
            p[at * 4096u + (pass & 4095u)] = (unsigned char)pass;
            if (++at == pages) {
                at = 0;
                pass++;
            }
        }
        thread_sleep_ns(1000000);
    }
}
