/* test-idle: ms=N idles (raw IDLE hypercalls) until N ms pass or an interrupt is
 * pending, then reports how long it slept and what was pending. wait=host: exit 0 only
 * if the host interrupt bit arrived. yields=N instead makes N IDLEs with a deadline long
 * past (yields), checks each one's out fields (OK, now_ns between the clock before and
 * after the call and never going back, pending 0 or the host bit) and prints
 * "yields=N bad=B host=H" (H: how many returned the host bit). */
#include <ilwaco.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    char v[24];
    if (cmdline_get("yields", v, sizeof v) >= 0) {
        unsigned long n = strtoul(v, 0, 10), bad = 0, host = 0;
        uint64_t last = clock_ns();
        for (unsigned long i = 0; i < n; i++) {
            struct denali_hc_idle y = {1, 0xdeadbeefdeadbeefull, 0xdeadbeef, 0};
            int r = denali_hc_idle(&y);
            uint64_t after = clock_ns();
            if (r != 0 || y.now_ns < last || y.now_ns > after || (y.pending & ~DENALI_IRQ_HOST))
                bad++;
            host += (y.pending & DENALI_IRQ_HOST) != 0;
            last = y.now_ns;
        }
        printf("yields=%lu bad=%lu host=%lu\n", n, bad, host);
        return 0;
    }
    uint64_t ms = cmdline_get("ms", v, sizeof v) >= 0 ? strtoul(v, 0, 10) : 0;
    int want_host = cmdline_get("wait", v, sizeof v) >= 0;
    uint64_t t0 = clock_ns(), deadline = t0 + ms * 1000000ull, now = t0;
    uint32_t pending = 0;
    while (now < deadline && !pending) {
        struct denali_hc_idle id = {deadline, 0, 0, 0};
        denali_hc_idle(&id);
        pending = id.pending;
        now = id.now_ns;
    }
    printf("idle: slept_us=%llu pending=0x%x\n", (unsigned long long)((clock_ns() - t0) / 1000), pending);
    if (want_host)
        return (pending & DENALI_IRQ_HOST) ? 0 : 1;
    return 0;
}
