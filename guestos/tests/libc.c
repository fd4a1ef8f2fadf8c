/* test-libc: the libc subset: formatting, strings, 64-bit arithmetic, conversion, heap. */
#include <ilwaco.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;

static void fmt_is(const char *got, const char *want)
{
    if (strcmp(got, want)) {
        printf("FAIL: format got '%s' want '%s'\n", got, want);
        failures++;
    }
}

static void check(int ok, const char *what)
{
    if (!ok) {
        printf("FAIL: %s\n", what);
        failures++;
    }
}

static void test_format(void)
{
    char b[128];
    snprintf(b, sizeof b, "%d|%i|%u|%x|%X|%o", -42, 7, 3000000000u, 0xbeef, 0xbeef, 8);
    fmt_is(b, "-42|7|3000000000|beef|BEEF|10");
    snprintf(b, sizeof b, "%llu", (1ull << 63) + 5);
    fmt_is(b, "9223372036854775813");
    snprintf(b, sizeof b, "%lld|%lld", -1234567890123ll, (long long)(-9223372036854775807ll - 1));
    fmt_is(b, "-1234567890123|-9223372036854775808");
    snprintf(b, sizeof b, "%08x|%-5s|%5s|%.3s|%c%%", 0x1f, "ab", "cd", "abcdef", 'z');
    fmt_is(b, "0000001f|ab   |   cd|abc|z%");
    snprintf(b, sizeof b, "%p|%zu|%s|%5d|%-5d|%05d", (void *)0x1234, (size_t)77, (char *)0, 42, 42, -42);
    fmt_is(b, "0x1234|77|(null)|   42|42   |-0042");
    int n = snprintf(b, 6, "%s", "truncated");
    check(n == 9 && !strcmp(b, "trunc"), "snprintf truncation");
    check(snprintf(0, 0, "%d", 12345) == 5, "snprintf size query");
}

static void test_strings(void)
{
    char b[32];
    check(strlen("hello") == 5 && strnlen("hello", 3) == 3, "strlen");
    check(strcmp("abc", "abd") < 0 && strcmp("b", "a") > 0 && !strcmp("x", "x"), "strcmp");
    check(!strncmp("abcdef", "abcxyz", 3) && strncmp("abc", "abd", 3) < 0, "strncmp");
    check(strchr("hello", 'l') - "hello" == 2 && strrchr("hello", 'l') - "hello" == 3, "strchr");
    check(strchr("hello", 'z') == 0, "strchr missing");
    check(strstr("haystack", "st") != 0 && strstr("haystack", "xy") == 0, "strstr");
    check(strlcpy(b, "0123456789", 5) == 10 && !strcmp(b, "0123"), "strlcpy");
    memset(b, 'x', sizeof b);
    memcpy(b + 1, "abc", 3);
    check(!memcmp(b, "xabcx", 5), "memcpy");
    memmove(b + 2, b + 1, 4);
    check(!memcmp(b, "xaabcx", 6), "memmove overlap");
    memmove(b, b + 1, 4);
    check(!memcmp(b, "aabcc", 5), "memmove down");
}

static void test_arith(void)
{
    volatile uint64_t a = 0xFFFFFFFFFFFFFFFFull, b = 0x100000001ull;
    check(a / b == 0xFFFFFFFFull && a % b == 0, "u64 div");
    volatile uint64_t c = 1000000000000ull, d = 7;
    check(c / d == 142857142857ull && c % d == 1, "u64 div small");
    volatile int64_t e = -1000000000001ll, f = 1000;
    check(e / f == -1000000000ll && e % f == -1, "s64 div");
    volatile int64_t g = 1000000000001ll, h = -1000;
    check(g / h == -1000000000ll && g % h == 1, "s64 div neg divisor");
    volatile uint64_t big = 0x8000000000000000ull, three = 3;
    check(big / three == 0x2AAAAAAAAAAAAAAAull && big % three == 2, "u64 high bit");
}

static void test_conv(void)
{
    char *end;
    check(strtoul("0x1F", 0, 0) == 31 && strtoul("017", 0, 0) == 15 && strtoul("99", 0, 10) == 99,
          "strtoul bases");
    check(strtoul("zz", &end, 36) == 1295 && *end == 0, "strtoul base 36");
    check(strtol("-123abc", &end, 10) == -123 && *end == 'a', "strtol end");
    check(atoi("  42") == 42 && atoi("-7") == -7, "atoi");
}

static void test_heap(void)
{
    size_t start = heap_free_bytes();
    void *p[64];
    for (int i = 0; i < 64; i++) {
        p[i] = malloc((size_t)(i * 37 + 1));
        check(p[i] != 0 && ((uintptr_t)p[i] & 15) == 0, "malloc aligned");
        memset(p[i], i, (size_t)(i * 37 + 1));
    }
    for (int i = 0; i < 64; i += 2)
        free(p[i]);
    for (int i = 1; i < 64; i += 2) {
        unsigned char *q = p[i];
        for (int j = 0; j < i * 37 + 1; j++)
            if (q[j] != i) {
                check(0, "heap corruption");
                return;
            }
    }
    char *r = malloc(10);
    strlcpy(r, "realloc", 10);
    r = realloc(r, 5000);
    check(r && !strcmp(r, "realloc"), "realloc keeps data");
    free(r);
    int *z = calloc(100, sizeof(int));
    int allzero = z != 0;
    for (int i = 0; z && i < 100; i++)
        allzero &= z[i] == 0;
    check(allzero, "calloc zeroes");
    free(z);
    for (int i = 1; i < 64; i += 2)
        free(p[i]);
    check(heap_free_bytes() == start, "heap returns to its start size");
    check(malloc((size_t)DENALI_VREGS->mem_size) == 0, "malloc(huge) is NULL");
    check(calloc(0x10000, 0x10000) == 0, "calloc overflow is NULL");
}

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    test_format();
    test_strings();
    test_arith();
    test_conv();
    test_heap();
    if (failures)
        return 1;
    printf("SUCCESS\n");
    return 0;
}
