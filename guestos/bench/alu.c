/* bench-alu: n=N iterations of loop_alu (see loops.c); prints the result. */
#include <ilwaco.h>
#include <stdio.h>
#include <stdlib.h>
#include "loops.h"

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    char v[16];
    uint32_t n = cmdline_get("n", v, sizeof v) >= 0 ? (uint32_t)strtoul(v, 0, 10) : 1000;
    printf("result=%u\n", loop_alu(n));
    return 0;
}
