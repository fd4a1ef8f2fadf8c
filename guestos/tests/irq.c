/* test-irq: interrupts delivered through a registered handler.
 * mode=host: spin until the handler sees DENALI_IRQ_HOST (the host raises it).
 * mode=timer: arm the one-shot timer for +20 ms, spin until the handler sees TIMER.
 * mode=masked: with interrupts disabled, the TIMER bit must only show up as pending. */
#include <ilwaco.h>
#include <stdio.h>
#include <string.h>

static volatile uint32_t seen;
static volatile int calls;

static void handler(uint32_t mask)
{
    seen |= mask;
    calls++;
}

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    char mode[16] = "host";
    cmdline_get("mode", mode, sizeof mode);
    irq_set_handler(handler);
    if (!strcmp(mode, "host")) {
        printf("ready\n");
        while (!(seen & DENALI_IRQ_HOST))
            ;
        printf("SUCCESS got=0x%x\n", seen);
        return 0;
    }
    if (!strcmp(mode, "timer")) {
        struct denali_hc_timer_set t = {clock_ns() + 20000000ull};
        denali_hc_timer_set(&t);
        while (!(seen & DENALI_IRQ_TIMER))
            ;
        printf("SUCCESS got=0x%x\n", seen);
        return 0;
    }
    if (!strcmp(mode, "masked")) {
        irq_disable();
        uint64_t start = clock_ns();
        struct denali_hc_timer_set t = {start + 5000000ull};
        denali_hc_timer_set(&t);
        for (unsigned long i = 0; !(DENALI_VREGS->pending & DENALI_IRQ_TIMER); i++) {
            if (i % 100000 == 0 && clock_ns() - start > 2000000000ull) {
                printf("FAIL: never pending\n");
                return 1;
            }
        }
        if (calls) {
            printf("FAIL: handler ran while masked\n");
            return 1;
        }
        printf("SUCCESS masked\n");
        return 0;
    }
    printf("FAIL: unknown mode %s\n", mode);
    return 2;
}
