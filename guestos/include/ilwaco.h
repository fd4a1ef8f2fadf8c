/* ilwaco.h: the guest library OS API (named after Denali's guest OS).
 *
 * Boot: the kernel enters _start at CPL 3 with ESP at the top of guest memory.
 * The start code splits the command line into argv (on spaces) and calls
 * main(argc, argv) as thread 0; when main returns its value is the exit status.
 *
 * Threads are cooperative: a thread runs until it blocks (lock, condition, sleep,
 * irq_wait) or yields. When no thread can run the scheduler issues the IDLE hypercall
 * with the earliest pending thread deadline (Ilwaco's model), then wakes the threads
 * whose deadline passed or whose interrupt bits arrived. */
#ifndef GUESTOS_ILWACO_H
#define GUESTOS_ILWACO_H
#include <stddef.h>
#include <stdint.h>
#include <denali/abi.h>

#define ETIMEDOUT 110

int main(int argc, char **argv);

/* ---- time ---- */
uint64_t now_ns(void);          /* vregs time (as of the current slice); no trap */
uint64_t clock_ns(void);        /* exact kernel time through the CLOCK hypercall */

/* ---- console ---- */
void console_write(const void *buf, size_t len);

/* ---- command line ---- */
/* Copies the value of "key=value" from the command line into out (NUL-terminated,
 * truncated to n-1); returns the value's length, or -1 when the key is absent. */
int cmdline_get(const char *key, char *out, size_t n);

/* ---- threads ---- */
typedef struct thread thread_t;
/* Creates a runnable thread with its own stack (0 = 16 KiB); NULL if out of memory. */
thread_t *thread_create(void (*fn)(void *), void *arg, size_t stack_size);
void thread_yield(void);
__attribute__((noreturn)) void thread_exit(void);
/* Waits for t to finish, then frees it. Returns 0, or -1 if t is the caller, detached,
 * or already joined. */
int thread_join(thread_t *t);
/* Nobody will join t: it is freed as soon as it ends (at once if it has ended already).
 * 0, or -1 if t is the boot thread, already detached, or being joined. */
int thread_detach(thread_t *t);
/* Wakes t if it is blocked in irq_wait or a sleep (it returns as on a timeout), so it can
 * look again at what it waits for, e.g. an earlier deadline; does nothing otherwise. */
void thread_wake(thread_t *t);
/* Threads alive (created and not yet freed), the boot thread included. */
int thread_count(void);
thread_t *thread_self(void);
void thread_sleep_until(uint64_t deadline_ns);
void thread_sleep_ns(uint64_t ns);

/* ---- locks and condition variables ---- */
typedef struct mutex { thread_t *owner; struct thread *waiters; } mutex_t;
typedef struct cond { struct thread *waiters; } cond_t;
#define MUTEX_INIT {0, 0}
#define COND_INIT {0}
void mutex_init(mutex_t *m);
void mutex_lock(mutex_t *m);
void mutex_unlock(mutex_t *m);
void cond_init(cond_t *c);
void cond_wait(cond_t *c, mutex_t *m);
/* Like cond_wait but gives up at deadline_ns (0 = never): 0 or ETIMEDOUT. */
int cond_timedwait(cond_t *c, mutex_t *m, uint64_t deadline_ns);
void cond_signal(cond_t *c);
void cond_broadcast(cond_t *c);

/* ---- virtual interrupts ---- */
/* Blocks the calling thread until one of the bits in mask arrives or deadline_ns
 * passes (0 = no deadline). Returns the bits of mask that arrived (0 on timeout).
 * Bits that arrive while no thread waits for them stay pending for the next waiter. */
uint32_t irq_wait(uint32_t mask, uint64_t deadline_ns);
/* Installs an interrupt handler (run on the current stack, interrupts masked) through
 * the SET_HANDLER hypercall and enables delivery; NULL removes it and masks. */
void irq_set_handler(void (*fn)(uint32_t mask));
/* Set/clear the interrupt-enable virtual register; irq_disable returns the old value. */
void irq_enable(void);
int irq_disable(void);

#endif
