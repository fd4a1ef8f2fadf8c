/* test-print: lines=N prints N numbered lines of 64 bytes, then "printed N lines", and
 * exits 0 (a console flood, for the host's output back-pressure). */
#include <ilwaco.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    char v[24];
    unsigned long n = cmdline_get("lines", v, sizeof v) >= 0 ? strtoul(v, 0, 10) : 1000;
    for (unsigned long i = 1; i <= n; i++)
        printf("line %10lu of the flood .....................................\n", i);
    printf("printed %lu lines\n", n);
    return 0;
}
