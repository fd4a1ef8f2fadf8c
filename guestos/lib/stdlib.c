/* stdlib.c: number conversion and exit (stdlib.h). */
#include <stdlib.h>
#include <stdio.h>
#include <denali/abi.h>

unsigned long strtoul(const char *s, char **end, int base)
{
    while (*s == ' ' || *s == '\t')
        s++;
    if (*s == '+')
        s++;
    if ((base == 0 || base == 16) && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        s += 2;
        base = 16;
    } else if (base == 0 && s[0] == '0') {
        base = 8;
    } else if (base == 0) {
        base = 10;
    }
    unsigned long v = 0;
    for (;; s++) {
        int d;
        if (*s >= '0' && *s <= '9')
            d = *s - '0';
        else if (*s >= 'a' && *s <= 'z')
            d = *s - 'a' + 10;
        else if (*s >= 'A' && *s <= 'Z')
            d = *s - 'A' + 10;
        else
            break;
        if (d >= base)
            break;
        v = v * (unsigned long)base + (unsigned long)d;
    }
    if (end)
        *end = (char *)s;
    return v;
}

long strtol(const char *s, char **end, int base)
{
    while (*s == ' ' || *s == '\t')
        s++;
    int neg = *s == '-';
    if (neg)
        s++;
    unsigned long v = strtoul(s, end, base);
    return neg ? -(long)v : (long)v;
}

int atoi(const char *s)
{
    return (int)strtol(s, 0, 10);
}

void exit(int status)
{
    struct denali_hc_terminate t = {(uint32_t)status, 0};
    for (;;)
        denali_hc_terminate(&t);
}

void abort(void)
{
    printf("abort\n");
    exit(134);
}
