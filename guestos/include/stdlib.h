/* stdlib.h: allocation, conversion and exit of the guestos libc subset. */
#ifndef GUESTOS_STDLIB_H
#define GUESTOS_STDLIB_H
#include <stddef.h>
#include <stdint.h>

/* The heap spans [vregs.heap_start, vregs.heap_end), sized from the memory-size
 * virtual register. malloc returns 16-byte aligned memory or NULL when exhausted. */
void *malloc(size_t n);
void *calloc(size_t count, size_t size);
void *realloc(void *p, size_t n);
void free(void *p);
/* Bytes still free in the heap (for tests and diagnostics). */
size_t heap_free_bytes(void);
/* Bytes allocated and not yet freed, headers included (O(1)). */
size_t heap_used_bytes(void);

int atoi(const char *s);
unsigned long strtoul(const char *s, char **end, int base);
long strtol(const char *s, char **end, int base);

/* Terminates the VM with this status (the TERMINATE hypercall); never returns. */
__attribute__((noreturn)) void exit(int status);
/* exit(134) after printing "abort" to the console. */
__attribute__((noreturn)) void abort(void);

#endif
