/* test-fault: kind=K triggers one kind of guest fault (see the table below).
 * With at=N vm=I (e.g. --count 3 --cmdline "kind=ud2 at=2 vm={i}") only VM N faults;
 * the others print "no fault here" and exit 0. */
#include <ilwaco.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static volatile int sink;

__attribute__((noinline)) static int recurse(int depth)
{
    volatile char frame[1024];
    frame[0] = (char)depth;
    frame[1023] = (char)depth;
    if (depth < 0x7fffffff) /* never false in practice: the stack ends first */
        return recurse(depth + 1) + frame[0];
    return frame[1023];
}

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    char kind[32];
    if (cmdline_get("kind", kind, sizeof kind) < 0) {
        printf("usage: kind=K\n");
        return 2;
    }
    char at[16], vm[16];
    if (cmdline_get("at", at, sizeof at) >= 0 && cmdline_get("vm", vm, sizeof vm) >= 0 && strcmp(at, vm)) {
        printf("no fault here\n");
        return 0;
    }
    printf("about to fault: %s\n", kind);
    volatile int zero = 0;
    if (!strcmp(kind, "null-read"))
        sink = *(volatile int *)0;
    else if (!strcmp(kind, "null-write"))
        *(volatile int *)0 = 1;
    else if (!strcmp(kind, "kernel-read"))
        sink = *(volatile int *)0xC0000000u;
    else if (!strcmp(kind, "kernel-write"))
        *(volatile int *)0xC0000000u = 1;
    else if (!strcmp(kind, "outside-write"))
        *(volatile int *)(DENALI_VREGS->mem_size + 0x10000) = 1;
    else if (!strcmp(kind, "code-write"))
        *(volatile char *)(void *)main = 1;
    else if (!strcmp(kind, "unmapped-write")) /* the report must say 0x3abc, not its page */
        *(volatile int *)0x3abcu = 1;
    else if (!strcmp(kind, "unmapped-string")) { /* rep movsb reading from 0x5123 */
        char buf[8];
        __asm__ volatile("rep movsb" ::"S"(0x5123u), "D"(buf), "c"(8) : "memory");
    } else if (!strcmp(kind, "unmapped-push")) /* a push into an unmapped page at 0x7ff0 */
        __asm__ volatile("movl %%esp, %%ebx\n movl $0x7ff4, %%esp\n pushl $1\n movl %%ebx, %%esp"
                         ::: "ebx", "memory");
    else if (!strcmp(kind, "kernel-page-write"))
        *(volatile int *)DENALI_ADDR_KERNEL_PAGE = 1;
    else if (!strcmp(kind, "exec-data")) {
        unsigned char *p = malloc(16);
        p[0] = 0xC3; /* ret */
        ((void (*)(void))(void *)p)();
    } else if (!strcmp(kind, "exec-stack")) {
        volatile unsigned char code[16];
        code[0] = 0xC3;
        ((void (*)(void))(void *)code)();
    } else if (!strcmp(kind, "ud2"))
        __asm__ volatile("ud2");
    else if (!strcmp(kind, "priv-cli"))
        __asm__ volatile("cli");
    else if (!strcmp(kind, "priv-hlt"))
        __asm__ volatile("hlt");
    else if (!strcmp(kind, "priv-out"))
        __asm__ volatile("outb %%al, $0x80" ::"a"(0));
    else if (!strcmp(kind, "div0"))
        sink = 5 / zero;
    else if (!strcmp(kind, "stack-overflow"))
        sink = recurse(0);
    else if (!strcmp(kind, "int3"))
        __asm__ volatile("int3");
    else if (!strcmp(kind, "int-other"))
        __asm__ volatile("int $0x81");
    else {
        printf("unknown kind %s\n", kind);
        return 2;
    }
    printf("FAIL: survived %s\n", kind);
    return 99;
}
