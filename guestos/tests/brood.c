/* test-brood: a parent with many busy children (the CPU-share test). n=N children (default
 * 10), each running the image on the disk "img" (test-spin) with mem=BYTES (default 1 MiB)
 * of memory, all started; then this VM waits for their events for ever (it interposes on
 * nothing, so only their ends arrive). Prints "brood: N children running" or
 * "brood: FAIL ...". */
#include <denali/child.h>
#include <ilwaco.h>
#include <stdio.h>
#include <stdlib.h>

static uint32_t num(const char *key, uint32_t dflt)
{
    char v[24];
    return cmdline_get(key, v, sizeof v) > 0 ? (uint32_t)strtoul(v, 0, 0) : dflt;
}

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    uint32_t n = num("n", 10), mem = num("mem", 1u << 20);
    void *image;
    uint32_t len, h;
    int r = child_load_disk("img", &image, &len);
    if (r != DENALI_OK) {
        printf("brood: FAIL child_load_disk (code %d)\n", r);
        return 100;
    }
    for (uint32_t i = 0; i < n; i++) {
        if ((r = child_create(image, len, mem, 0, "", 0, 0, &h)) != DENALI_OK ||
            (r = child_start(h)) != DENALI_OK) {
            printf("brood: FAIL child %u (code %d)\n", (unsigned)i, r);
            return 100;
        }
    }
    printf("brood: %u children running\n", (unsigned)n);
    for (;;) {
        child_event_t ev;
        child_next_event(&ev);
        printf("brood: child %u ended (kind %u)\n", (unsigned)ev.handle, (unsigned)ev.kind);
    }
}
