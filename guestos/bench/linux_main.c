/* linux_main.c: runs one loop (chosen by -DLOOP_alu/store/call) argv[1] times; the
 * exit status is the low byte of the result. No libc. */
#include <stdint.h>
#include "loops.h"

int linux_main(int argc, char **argv);
int linux_main(int argc, char **argv)
{
    uint32_t n = 0;
    if (argc > 1)
        for (const char *p = argv[1]; *p >= '0' && *p <= '9'; p++)
            n = n * 10 + (uint32_t)(*p - '0');
#if defined(LOOP_alu)
    return (int)(loop_alu(n) & 0xff);
#elif defined(LOOP_store)
    return (int)(loop_store(n) & 0xff);
#else
    return (int)(loop_call(n) & 0xff);
#endif
}
