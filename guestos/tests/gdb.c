/* test-gdb: a program to debug (built with debug information; see guestos/Makefile).
 * gdb_target() is called three times; the exit status is gdb_value, which a debugger
 * may change. spin=1: loop (sleeping 1 ms per turn) until a debugger sets gdb_stop. */
#include <ilwaco.h>
#include <stdio.h>

volatile int gdb_value = 7;
volatile int gdb_stop;
int gdb_calls;

__attribute__((noinline)) int gdb_target(int x)
{
    gdb_calls++;
    return x * 2 + gdb_value;
}

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    char v[8];
    if (cmdline_get("spin", v, sizeof v) >= 0) {
        unsigned long turns = 0;
        printf("spinning\n");
        while (!gdb_stop) {
            turns++;
            thread_sleep_ns(1000000);
        }
        printf("stopped after %lu turns\n", turns);
    }
    int sum = 0;
    for (int i = 0; i < 3; i++)
        sum += gdb_target(i);
    printf("gdb_value=%d sum=%d calls=%d\n", gdb_value, sum, gdb_calls);
    return gdb_value;
}
