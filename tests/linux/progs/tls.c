/* tls.c: thread-local storage through %gs, and x87/SSE state, kept across system calls
 * and sleeps (the VM may be swapped out and back in while it sleeps). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

__thread int counter = 41;
__thread char name[32] = "initial";
__thread double scale = 1.5;
static __thread long zeroed[16];

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 3;
    int ms = argc > 2 ? atoi(argv[2]) : 10;
    double acc = 0.1;
    long double ext = 1.0L / 3.0L;
    unsigned gs;
    __asm__ volatile("movl %%gs, %0" : "=r"(gs));
    printf("gs=%#x counter=%d name=%s scale=%.2f zero=%ld\n", gs & 0xffff, counter, name, scale, zeroed[7]);
    for (int i = 0; i < rounds; i++) {
        counter++;
        snprintf(name, sizeof name, "round-%d", i);
        acc = acc * scale + 0.25;
        ext = ext * 3.0L - 0.5L;
        struct timespec t = {0, ms * 1000000L};
        nanosleep(&t, 0);
        getpid();
    }
    unsigned gs2;
    __asm__ volatile("movl %%gs, %0" : "=r"(gs2));
    printf("gs=%#x counter=%d name=%s acc=%.6f ext=%.12Lf same_gs=%d\n", gs2 & 0xffff, counter, name, acc,
           ext, gs == gs2);
    return counter == 41 + rounds ? 0 : 1;
}
