/* test-hostile: hypercalls with hostile arguments must only return result codes.
 * Boot it without a NIC. */
#include <ilwaco.h>
#include <stdio.h>
#include <string.h>

static int failures;
static const struct denali_hc_idle ro_idle = {0, 0, 0, 0};
static unsigned char canary[4096];

static void expect(const char *what, int got, int want)
{
    if (got != want) {
        printf("FAIL: %s got %d want %d\n", what, got, want);
        failures++;
    }
}

static int console(uint32_t buf, uint32_t len)
{
    struct denali_hc_console_write w = {buf, len};
    return denali_hc_console_write(&w);
}

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    uint32_t mem = DENALI_VREGS->mem_size;
    memset(canary, 0xA5, sizeof canary);

    expect("nr 0", denali_hypercall(0, 0), DENALI_NOSYS);
    expect("nr after last", denali_hypercall(DENALI_HC_LAST + 1, 0), DENALI_NOSYS);
    expect("nr 999", denali_hypercall(999, 0), DENALI_NOSYS);
    expect("nr ffffffff", denali_hypercall(0xffffffffu, 0), DENALI_NOSYS);

    expect("idle NULL", denali_hypercall(DENALI_HC_IDLE, 0), DENALI_FAULT);
    expect("idle page0", denali_hypercall(DENALI_HC_IDLE, (void *)0x10), DENALI_FAULT);
    expect("idle kernel", denali_hypercall(DENALI_HC_IDLE, (void *)0xC0000000u), DENALI_FAULT);
    expect("idle wrap", denali_hypercall(DENALI_HC_IDLE, (void *)0xFFFFFFF8u), DENALI_FAULT);
    expect("idle straddle", denali_hypercall(DENALI_HC_IDLE, (void *)(mem - 4)), DENALI_FAULT);
    expect("idle rodata", denali_hypercall(DENALI_HC_IDLE, (void *)&ro_idle), DENALI_FAULT);
    expect("idle text", denali_hypercall(DENALI_HC_IDLE, (void *)main), DENALI_FAULT);
    expect("clock kernel page", denali_hypercall(DENALI_HC_CLOCK, (void *)DENALI_ADDR_KERNEL_PAGE),
           DENALI_FAULT);

    expect("console too long", console((uint32_t)canary, 65537), DENALI_INVAL);
    expect("console kernel", console(0xC0000000u, 4), DENALI_FAULT);
    expect("console past end", console(mem - 10, 100), DENALI_FAULT);
    expect("console wrap", console(0xFFFFFF00u, 0x200), DENALI_FAULT);
    expect("console page0", console(0x10, 4), DENALI_FAULT);
    expect("console empty", console(0, 0), DENALI_OK);

    struct denali_hc_net_info ni;
    struct denali_hc_net_send ns = {0, 0, 0, 0};
    struct denali_hc_net_recv nr = {0, 1514, 1, 0, 0, 0};
    expect("net_info no nic", denali_hc_net_info(&ni), DENALI_NODEV);
    expect("net_send no nic", denali_hc_net_send(&ns), DENALI_NODEV);
    expect("net_recv no nic", denali_hc_net_recv(&nr), DENALI_NODEV);

    struct denali_hc_set_handler h = {0x10, 0};
    expect("handler page0", denali_hc_set_handler(&h), DENALI_INVAL);
    h.entry = 0xC0000000u;
    expect("handler kernel", denali_hc_set_handler(&h), DENALI_INVAL);
    h.entry = (uint32_t)canary;
    expect("handler data", denali_hc_set_handler(&h), DENALI_INVAL);
    h.entry = 0;
    expect("handler none", denali_hc_set_handler(&h), DENALI_OK);

    struct denali_hc_timer_set ts = {0};
    expect("timer off", denali_hc_timer_set(&ts), DENALI_OK);

    for (unsigned i = 0; i < sizeof canary; i++) {
        if (canary[i] != 0xA5) {
            printf("FAIL: canary changed at %u\n", i);
            failures++;
            break;
        }
    }
    if (failures)
        return 1;
    printf("SUCCESS\n");
    return 0;
}
