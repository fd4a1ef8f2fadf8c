/* sys.c: boot (__ilwaco_start), time, console and the command line. */
#include <ilwaco.h>
#include <stdlib.h>
#include <string.h>
#include "internal.h"

#define MAX_ARGS 32

static char cmdline_copy[DENALI_CMDLINE_MAX + 1];

uint64_t now_ns(void)
{
    return DENALI_VREGS->time_ns;
}

uint64_t clock_ns(void)
{
    struct denali_hc_clock c = {0};
    denali_hc_clock(&c);
    return c.now_ns;
}

void console_write(const void *buf, size_t len)
{
    const char *p = buf;
    while (len) {
        size_t k = len > DENALI_CONSOLE_MAX_WRITE ? DENALI_CONSOLE_MAX_WRITE : len;
        struct denali_hc_console_write w = {(uint32_t)p, (uint32_t)k};
        denali_hc_console_write(&w);
        p += k;
        len -= k;
    }
}

int cmdline_get(const char *key, char *out, size_t n)
{
    size_t klen = strlen(key);
    const char *s = DENALI_CMDLINE;
    while (*s) {
        while (*s == ' ')
            s++;
        const char *w = s;
        while (*s && *s != ' ')
            s++;
        if ((size_t)(s - w) > klen && !strncmp(w, key, klen) && w[klen] == '=') {
            const char *v = w + klen + 1;
            size_t vlen = (size_t)(s - v);
            if (n) {
                size_t c = vlen < n - 1 ? vlen : n - 1;
                memcpy(out, v, c);
                out[c] = 0;
            }
            return (int)vlen;
        }
    }
    return -1;
}

void __ilwaco_start(void);
void __ilwaco_start(void)
{
    static char *argv[MAX_ARGS + 1];
    int argc = 0;
    __heap_init();
    __threads_init();
    strlcpy(cmdline_copy, DENALI_CMDLINE, sizeof cmdline_copy);
    char *s = cmdline_copy;
    while (*s && argc < MAX_ARGS) {
        while (*s == ' ')
            *s++ = 0;
        if (!*s)
            break;
        argv[argc++] = s;
        while (*s && *s != ' ')
            s++;
    }
    argv[argc] = 0;
    exit(main(argc, argv));
}
