/* stdio.h: formatted console output of the guestos libc subset.
 * Supported conversions: %d %i %u %x %X %o %c %s %p %% with flags '-', '0', width,
 * precision for %s, and the length modifiers l, ll, z. No floating point. */
#ifndef GUESTOS_STDIO_H
#define GUESTOS_STDIO_H
#include <stdarg.h>
#include <stddef.h>

int printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int vprintf(const char *fmt, va_list ap);
int snprintf(char *buf, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int vsnprintf(char *buf, size_t n, const char *fmt, va_list ap);
int puts(const char *s);       /* writes s and a newline */
int putchar(int c);

#endif
