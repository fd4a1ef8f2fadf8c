/* hello: the demo guest. Greets, shows its command line, exits 0. */
#include <ilwaco.h>
#include <stdio.h>

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    printf("Hello from denali! I am VM %u, with %u KiB of memory.\n", DENALI_VREGS->vm_id,
           DENALI_VREGS->mem_size / 1024);
    if (DENALI_VREGS->cmdline_len)
        printf("cmdline: %s\n", DENALI_CMDLINE);
    return 0;
}
