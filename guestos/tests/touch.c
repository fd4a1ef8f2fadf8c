/* test-touch: kib=N writes one byte in every page of N KiB of heap, then idles until the
 * host interrupt (used to measure resident memory per VM). */
#include <ilwaco.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    char v[16];
    unsigned kib = cmdline_get("kib", v, sizeof v) >= 0 ? (unsigned)atoi(v) : 0;
    volatile char *p = kib ? malloc(kib * 1024u) : 0;
    if (kib && !p) {
        printf("FAIL: no memory for %u KiB\n", kib);
        return 1;
    }
    for (unsigned off = 0; off < kib * 1024u; off += 4096)
        p[off] = 1;
    printf("touched %u KiB\n", kib);
    for (;;) {
        struct denali_hc_idle id = {0, 0, 0, 0};
        denali_hc_idle(&id);
        if (id.pending & DENALI_IRQ_HOST)
            return 0;
    }
}
