/* thread.c: cooperative threads, locks, condition variables, sleeping and interrupt
 * waits, and the scheduler that idles the VM when no thread can run (Ilwaco's model).
 *
 * A thread is RUNNABLE (in the run queue or running), BLOCKED (waiting on a mutex, a
 * condition, a deadline, interrupt bits, or a join) or DONE. Blocked threads with a
 * deadline sit in a min-heap by deadline and threads in irq_wait in a list of their own,
 * so scheduling costs O(log threads) however many threads a guest has (thousands of
 * idle connection threads in a server). When nothing is runnable the scheduler calls
 * IDLE with the earliest deadline (0 = none) and hands the returned interrupt bits to
 * the threads waiting for them; bits nobody waits for are kept for the next irq_wait.
 * A detached thread that ends is freed by the scheduler once it runs on another stack. */
#include <ilwaco.h>
#include <stdlib.h>
#include <string.h>
#include "internal.h"

enum { RUNNABLE, BLOCKED, DONE };

#define STACK_DEFAULT (16 * 1024)
#define CANARY 0x5ca1ab1eu

struct thread {
    uint32_t sp;
    int state;
    struct thread *run_next;   /* run queue */
    struct thread *wait_next;  /* mutex/cond wait queue */
    struct thread **wait_q;    /* the queue it waits in, if any */
    struct thread *all_next, *all_prev; /* every live thread (doubly linked: O(1) removal) */
    struct thread *irq_next, *irq_prev; /* threads blocked in irq_wait */
    void (*fn)(void *);
    void *arg;
    uint32_t *stack;           /* malloc'd; NULL for the boot thread */
    uint64_t deadline;         /* wake at this time (0: none) */
    int heap_idx;              /* position in the deadline heap, -1 when not in it */
    uint32_t irq_mask;         /* waiting for these interrupt bits */
    uint32_t irq_got;
    int timed_out;
    int detached;              /* freed by the scheduler when it ends (nobody joins) */
    int in_irq_wait;
    struct thread *joiner;
    struct thread *zombie_next;
};

void __thread_switch(uint32_t *save_sp, uint32_t load_sp);
void __thread_boot(void);
void __thread_main(void);
void __irq_entry(void);
void __irq_dispatch(uint32_t mask);

static struct thread boot_thread;
static struct thread *current = &boot_thread;
static struct thread *run_head, *run_tail;
static struct thread *all_threads = &boot_thread;
static struct thread *irq_list;            /* threads blocked in irq_wait */
static struct thread *zombies;             /* detached threads that ended, not yet freed */
static struct thread *dheap_boot[64];
static struct thread **dheap = dheap_boot; /* min-heap of blocked threads by deadline */
static int dheap_n, dheap_cap = 64;
static int live_threads = 1;
static uint32_t irq_stash;                 /* arrived, not yet claimed by a waiter */
static volatile uint32_t irq_from_handler; /* recorded by the interrupt handler */
static void (*user_handler)(uint32_t);

void __threads_init(void)
{
    boot_thread.state = RUNNABLE;
    boot_thread.heap_idx = -1;
}

thread_t *thread_self(void)
{
    return current;
}

int thread_count(void)
{
    return live_threads;
}

/* ---- the deadline heap: earliest deadline first, O(log n) insert and removal ---- */

static void dheap_set(int i, struct thread *t)
{
    dheap[i] = t;
    t->heap_idx = i;
}

static void dheap_up(int i)
{
    struct thread *t = dheap[i];
    while (i > 0) {
        int parent = (i - 1) / 2;
        if (dheap[parent]->deadline <= t->deadline)
            break;
        dheap_set(i, dheap[parent]);
        i = parent;
    }
    dheap_set(i, t);
}

static void dheap_down(int i)
{
    struct thread *t = dheap[i];
    for (;;) {
        int c = 2 * i + 1;
        if (c >= dheap_n)
            break;
        if (c + 1 < dheap_n && dheap[c + 1]->deadline < dheap[c]->deadline)
            c++;
        if (dheap[c]->deadline >= t->deadline)
            break;
        dheap_set(i, dheap[c]);
        i = c;
    }
    dheap_set(i, t);
}

static void dheap_remove(struct thread *t)
{
    int i = t->heap_idx;
    if (i < 0)
        return;
    t->heap_idx = -1;
    struct thread *last = dheap[--dheap_n];
    if (last == t)
        return;
    dheap_set(i, last);
    dheap_up(i);
    dheap_down(last->heap_idx);
}

/* The calling thread will block with this deadline (0: none). The heap always has room:
 * thread_create grows it to hold every live thread. */
static void set_deadline(uint64_t deadline)
{
    struct thread *t = current;
    dheap_remove(t);
    t->deadline = deadline;
    if (!deadline)
        return;
    dheap_set(dheap_n, t);
    dheap_n++;
    dheap_up(t->heap_idx);
}

static void make_runnable(struct thread *t)
{
    t->state = RUNNABLE;
    t->run_next = 0;
    if (run_tail)
        run_tail->run_next = t;
    else
        run_head = t;
    run_tail = t;
}

static void queue_remove(struct thread *t)
{
    if (!t->wait_q)
        return;
    for (struct thread **pp = t->wait_q; *pp; pp = &(*pp)->wait_next) {
        if (*pp == t) {
            *pp = t->wait_next;
            break;
        }
    }
    t->wait_q = 0;
    t->wait_next = 0;
}

static void queue_append(struct thread **q, struct thread *t)
{
    struct thread **pp = q;
    while (*pp)
        pp = &(*pp)->wait_next;
    *pp = t;
    t->wait_next = 0;
    t->wait_q = q;
}

static struct thread *queue_pop(struct thread **q)
{
    struct thread *t = *q;
    if (t) {
        *q = t->wait_next;
        t->wait_next = 0;
        t->wait_q = 0;
    }
    return t;
}

static void irq_list_remove(struct thread *t)
{
    if (!t->in_irq_wait)
        return;
    if (t->irq_prev)
        t->irq_prev->irq_next = t->irq_next;
    else
        irq_list = t->irq_next;
    if (t->irq_next)
        t->irq_next->irq_prev = t->irq_prev;
    t->irq_next = t->irq_prev = 0;
    t->in_irq_wait = 0;
}

static void wake(struct thread *t)
{
    queue_remove(t);
    dheap_remove(t);
    irq_list_remove(t);
    t->deadline = 0;
    t->irq_mask = 0;
    make_runnable(t);
}

/* Hand arrived interrupt bits to waiting threads; keep the rest. A bit is an edge:
 * every waiter for it is woken; bits nobody waited for are stashed. */
static void distribute_irqs(uint32_t bits)
{
    bits |= irq_stash;
    irq_stash = 0;
    uint32_t taken = 0;
    struct thread *t = irq_list;
    while (t && bits) {
        struct thread *next = t->irq_next;
        if (t->irq_mask & bits) {
            t->irq_got = t->irq_mask & bits;
            taken |= t->irq_got;
            wake(t);
        }
        t = next;
    }
    irq_stash = bits & ~taken;
}

static void wake_expired(uint64_t now)
{
    while (dheap_n && dheap[0]->deadline <= now) {
        struct thread *t = dheap[0];
        t->timed_out = 1;
        wake(t);
    }
}

/* Free detached threads that ended (never the one running: its stack is in use). */
static void reap(void)
{
    struct thread **pp = &zombies;
    while (*pp) {
        struct thread *z = *pp;
        if (z == current) {
            pp = &z->zombie_next;
            continue;
        }
        *pp = z->zombie_next;
        free(z->stack);
        free(z);
    }
}

/* Collect interrupts and timeouts; idle the VM until something can run. */
static void poll_events(int may_idle)
{
    for (;;) {
        uint32_t handled = irq_from_handler;
        if (handled) {
            irq_from_handler = 0;
            distribute_irqs(handled);
        }
        if (!may_idle || run_head) {
            /* Runnable threads exist: only collect what is already due, cheaply. */
            if (irq_list && (DENALI_VREGS->pending & DENALI_IRQ_ALL)) {
                struct denali_hc_idle y = {1, 0, 0, 0}; /* a yield that returns the bits */
                denali_hc_idle(&y);
                distribute_irqs(y.pending);
            }
            if (dheap_n && dheap[0]->deadline <= now_ns())
                wake_expired(now_ns());
            return;
        }
        uint64_t deadline = dheap_n ? dheap[0]->deadline : 0;
        struct denali_hc_idle id = {deadline, 0, 0, 0};
        denali_hc_idle(&id);
        distribute_irqs(id.pending);
        wake_expired(id.now_ns);
        if (run_head)
            return;
    }
}

/* Switch to the next runnable thread; the caller has already queued or blocked itself. */
static void schedule(void)
{
    if (zombies)
        reap();
    poll_events(1);
    struct thread *next = run_head;
    run_head = next->run_next;
    if (!run_head)
        run_tail = 0;
    next->run_next = 0;
    if (next == current)
        return;
    struct thread *prev = current;
    if (prev->stack && prev->stack[0] != CANARY) {
        printf("thread stack overflow\n");
        exit(139);
    }
    current = next;
    __thread_switch(&prev->sp, next->sp);
    if (zombies)
        reap();
}

static void block(void)
{
    current->state = BLOCKED;
    schedule();
}

void thread_yield(void)
{
    make_runnable(current);
    poll_events(0);
    schedule();
}

void __thread_main(void)
{
    if (zombies)
        reap();
    current->fn(current->arg);
    thread_exit();
}

thread_t *thread_create(void (*fn)(void *), void *arg, size_t stack_size)
{
    if (!stack_size)
        stack_size = STACK_DEFAULT;
    stack_size = (stack_size + 15) & ~(size_t)15;
    if (zombies)
        reap();
    if (live_threads + 1 > dheap_cap) {
        int cap = dheap_cap * 2;
        struct thread **h = malloc((size_t)cap * sizeof *h);
        if (!h)
            return 0;
        memcpy(h, dheap, (size_t)dheap_n * sizeof *h);
        if (dheap != dheap_boot)
            free(dheap);
        dheap = h;
        dheap_cap = cap;
    }
    struct thread *t = calloc(1, sizeof *t);
    uint32_t *stack = malloc(stack_size);
    if (!t || !stack) {
        free(t);
        free(stack);
        return 0;
    }
    stack[0] = CANARY;
    uint32_t *sp = (uint32_t *)((char *)stack + stack_size);
    *--sp = 0;                      /* fake return address of __thread_boot */
    *--sp = (uint32_t)__thread_boot;
    for (int i = 0; i < 4; i++)     /* ebp, ebx, esi, edi */
        *--sp = 0;
    t->sp = (uint32_t)sp;
    t->stack = stack;
    t->fn = fn;
    t->arg = arg;
    t->heap_idx = -1;
    t->all_next = all_threads;
    if (all_threads)
        all_threads->all_prev = t;
    all_threads = t;
    live_threads++;
    make_runnable(t);
    return t;
}

static void unlink_thread(struct thread *t)
{
    if (t->all_prev)
        t->all_prev->all_next = t->all_next;
    else
        all_threads = t->all_next;
    if (t->all_next)
        t->all_next->all_prev = t->all_prev;
    t->all_next = t->all_prev = 0;
    live_threads--;
}

void thread_exit(void)
{
    struct thread *t = current;
    if (t == &boot_thread)
        exit(0);
    t->state = DONE;
    if (t->detached) {
        unlink_thread(t);
        t->zombie_next = zombies;
        zombies = t;
    } else if (t->joiner) {
        wake(t->joiner);
    }
    schedule();
    for (;;)
        ;
}

int thread_detach(thread_t *t)
{
    if (!t || t == &boot_thread || t->detached || t->joiner)
        return -1;
    if (t->state == DONE) { /* already ended: free it now */
        unlink_thread(t);
        free(t->stack);
        free(t);
        return 0;
    }
    t->detached = 1;
    return 0;
}

int thread_join(thread_t *t)
{
    if (t == current || t == &boot_thread || t->joiner || t->detached)
        return -1;
    while (t->state != DONE) {
        t->joiner = current;
        block();
    }
    unlink_thread(t);
    free(t->stack);
    free(t);
    return 0;
}

void thread_wake(thread_t *t)
{
    if (t && t->state == BLOCKED && !t->wait_q && t != current)
        wake(t); /* blocked in irq_wait or a sleep: it returns as on a timeout */
}

void thread_sleep_until(uint64_t deadline_ns)
{
    if (!deadline_ns)
        deadline_ns = 1;
    current->timed_out = 0;
    while (!current->timed_out) {
        set_deadline(deadline_ns);
        block();
        if (now_ns() >= deadline_ns)
            break;
    }
    current->timed_out = 0;
}

void thread_sleep_ns(uint64_t ns)
{
    thread_sleep_until(clock_ns() + ns);
}

void mutex_init(mutex_t *m)
{
    m->owner = 0;
    m->waiters = 0;
}

void mutex_lock(mutex_t *m)
{
    if (!m->owner) {
        m->owner = current;
        return;
    }
    queue_append(&m->waiters, current);
    while (m->owner != current)
        block();
}

void mutex_unlock(mutex_t *m)
{
    struct thread *t = queue_pop(&m->waiters);
    m->owner = t;
    if (t)
        make_runnable(t);
}

void cond_init(cond_t *c)
{
    c->waiters = 0;
}

int cond_timedwait(cond_t *c, mutex_t *m, uint64_t deadline_ns)
{
    struct thread *self = current;
    queue_append(&c->waiters, self);
    set_deadline(deadline_ns);
    self->timed_out = 0;
    mutex_unlock(m);
    block();
    int r = self->timed_out ? ETIMEDOUT : 0;
    self->timed_out = 0;
    mutex_lock(m);
    return r;
}

void cond_wait(cond_t *c, mutex_t *m)
{
    cond_timedwait(c, m, 0);
}

void cond_signal(cond_t *c)
{
    struct thread *t = queue_pop(&c->waiters);
    if (t)
        wake(t);
}

void cond_broadcast(cond_t *c)
{
    struct thread *t;
    while ((t = queue_pop(&c->waiters)))
        wake(t);
}

uint32_t irq_wait(uint32_t mask, uint64_t deadline_ns)
{
    uint32_t ready = irq_stash & mask;
    if (ready) {
        irq_stash &= ~ready;
        return ready;
    }
    struct thread *self = current;
    self->irq_mask = mask;
    self->irq_got = 0;
    self->timed_out = 0;
    self->irq_prev = 0;
    self->irq_next = irq_list;
    if (irq_list)
        irq_list->irq_prev = self;
    irq_list = self;
    self->in_irq_wait = 1;
    set_deadline(deadline_ns);
    block();
    uint32_t got = self->irq_got;
    self->irq_got = 0;
    self->timed_out = 0;
    return got;
}

void __irq_dispatch(uint32_t mask)
{
    if (user_handler)
        user_handler(mask);
    irq_from_handler |= mask;
}

void irq_enable(void)
{
    DENALI_VREGS->irq_enable = 1;
}

int irq_disable(void)
{
    int old = (int)DENALI_VREGS->irq_enable;
    DENALI_VREGS->irq_enable = 0;
    return old;
}

void irq_set_handler(void (*fn)(uint32_t mask))
{
    irq_disable();
    user_handler = fn;
    struct denali_hc_set_handler h = {fn ? (uint32_t)__irq_entry : 0, 0};
    denali_hc_set_handler(&h);
    if (fn)
        irq_enable();
}
