/* internal.h: what the guestos library files share and apps do not see. */
#ifndef GUESTOS_INTERNAL_H
#define GUESTOS_INTERNAL_H
#include <stdint.h>
#include <stdio.h>

void __heap_init(void);
void __threads_init(void);
int __fmt(void (*emit)(void *ctx, const char *s, size_t n), void *ctx, const char *fmt,
          __builtin_va_list ap);

#endif
