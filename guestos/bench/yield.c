/* bench-yield: n=N IDLE hypercalls with a past deadline (each gives up the CPU). */
#include <ilwaco.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    char v[16];
    uint32_t n = cmdline_get("n", v, sizeof v) >= 0 ? (uint32_t)strtoul(v, 0, 10) : 1000;
    for (uint32_t i = 0; i < n; i++) {
        struct denali_hc_idle y = {1, 0, 0, 0};
        denali_hc_idle(&y);
    }
    return 0;
}
