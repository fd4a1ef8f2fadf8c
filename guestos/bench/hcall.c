/* bench-hcall: n=N CLOCK hypercalls (handled without leaving emulation). */
#include <ilwaco.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    char v[16];
    uint32_t n = cmdline_get("n", v, sizeof v) >= 0 ? (uint32_t)strtoul(v, 0, 10) : 1000;
    struct denali_hc_clock c;
    for (uint32_t i = 0; i < n; i++)
        denali_hc_clock(&c);
    return 0;
}
