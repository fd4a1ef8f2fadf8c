/* test-exit: status=N exits with N (via=return: returns it from main). */
#include <ilwaco.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    char v[16];
    int status = cmdline_get("status", v, sizeof v) >= 0 ? atoi(v) : 0;
    printf("exiting with %d\n", status);
    if (cmdline_get("via", v, sizeof v) >= 0 && v[0] == 'r')
        return status;
    exit(status);
}
