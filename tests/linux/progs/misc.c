/* misc.c: process start and the odds and ends around it.
 *   misc args A B     print argc/argv, envp and the aux vector entries a C library uses
 *   misc stdin        copy standard input to standard output, report the count on stderr
 *   misc fork         fork/execve must fail with ENOSYS
 *   misc kill SIG     send itself SIG (default action ends it with 128 + SIG)
 *   misc exit N       exit_group(N)
 *   misc segv         read address 0 (the VM faults: there is no SIGSEGV delivery)
 *   misc inport       an `in` (forbidden: the VM faults) and, in the same block, exit_group(0) */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/utsname.h>
#include <unistd.h>

extern char **environ;

int main(int argc, char **argv)
{
    if (argc > 1 && !strcmp(argv[1], "args")) {
        printf("argc=%d\n", argc);
        for (int i = 0; i < argc; i++)
            printf("argv[%d]=%s\n", i, argv[i]);
        for (char **e = environ; *e; e++)
            printf("env %s\n", *e);
        printf("pagesz=%lu uid=%lu euid=%lu gid=%lu secure=%lu\n", getauxval(AT_PAGESZ), getauxval(AT_UID),
               getauxval(AT_EUID), getauxval(AT_GID), getauxval(AT_SECURE));
        printf("phnum>0=%d entry>0=%d random=%d hwcap=%d sysinfo=%lu\n", getauxval(AT_PHNUM) > 0,
               getauxval(AT_ENTRY) > 0, getauxval(AT_RANDOM) != 0, getauxval(AT_HWCAP) != 0,
               getauxval(AT_SYSINFO));
        struct utsname u;
        uname(&u);
        printf("uname %s %s\n", u.sysname, u.machine);
        return 0;
    }
    if (argc > 1 && !strcmp(argv[1], "stdin")) {
        char buf[1000];
        long total = 0;
        ssize_t n;
        while ((n = read(0, buf, sizeof buf)) > 0) {
            write(1, buf, (size_t)n);
            total += n;
        }
        fprintf(stderr, "read %ld bytes\n", total);
        return n < 0 ? 1 : 0;
    }
    if (argc > 1 && !strcmp(argv[1], "fork")) {
        pid_t p = fork();
        printf("fork=%d errno=%s\n", (int)p, p < 0 ? strerror(errno) : "-");
        char *args[] = {"x", 0};
        int r = execve("/bin/true", args, environ);
        printf("execve=%d errno=%s\n", r, strerror(errno));
        return 0;
    }
    if (argc > 2 && !strcmp(argv[1], "kill")) {
        printf("before\n");
        fflush(stdout);
        kill(getpid(), atoi(argv[2]));
        printf("after\n");
        return 0;
    }
    if (argc > 2 && !strcmp(argv[1], "exit"))
        exit(atoi(argv[2]));
    if (argc > 1 && !strcmp(argv[1], "segv")) {
        volatile int *p = 0;
        printf("about to fault\n");
        fflush(stdout);
        return *p;
    }
    if (argc > 1 && !strcmp(argv[1], "inport")) {
        int r;
        printf("about to fault\n");
        fflush(stdout);
        __asm__ volatile("inb %%dx, %%al\n\tmovl $252, %%eax\n\tint $0x80"
                         : "=a"(r) : "b"(0), "d"(0x80) : "memory");
        return 3;
    }
    return 2;
}
