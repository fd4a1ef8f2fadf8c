/* test-spin: never calls the kernel again; only preemption can take the CPU back. */
#include <stdio.h>

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    volatile unsigned long counter = 0;
    printf("spinning\n");
    for (;;)
        counter++;
}
