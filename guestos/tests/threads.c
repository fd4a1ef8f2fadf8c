/* test-threads: cooperative threads, mutexes, condition variables, sleeps, joins. */
#include <ilwaco.h>
#include <stdio.h>
#include <stdlib.h>

static int failures;
#define CHECK(c, ...) do { if (!(c)) { printf("FAIL: " __VA_ARGS__); printf("\n"); failures++; } } while (0)

/* ---- bounded buffer: 3 producers, 2 consumers ---- */
#define SLOTS 8
#define ITEMS 1000
static mutex_t m = MUTEX_INIT;
static cond_t not_full = COND_INIT, not_empty = COND_INIT;
static int buf[SLOTS], head, count, produced, consumed_done;
static unsigned long consumed_sum;

static void producer(void *arg)
{
    int id = (int)(long)arg;
    for (;;) {
        mutex_lock(&m);
        while (count == SLOTS && produced < ITEMS)
            cond_wait(&not_full, &m);
        if (produced >= ITEMS) {
            mutex_unlock(&m);
            break;
        }
        int item = ++produced;
        buf[(head + count) % SLOTS] = item;
        count++;
        cond_signal(&not_empty);
        mutex_unlock(&m);
        if (item % (3 + id) == 0)
            thread_yield();
    }
}

static void consumer(void *arg)
{
    (void)arg;
    for (;;) {
        mutex_lock(&m);
        while (count == 0 && consumed_done < ITEMS)
            cond_wait(&not_empty, &m);
        if (count == 0 && consumed_done >= ITEMS) {
            mutex_unlock(&m);
            break;
        }
        int item = buf[head];
        head = (head + 1) % SLOTS;
        count--;
        consumed_sum += (unsigned long)item;
        consumed_done++;
        if (consumed_done >= ITEMS)
            cond_broadcast(&not_empty);
        cond_broadcast(&not_full);
        mutex_unlock(&m);
    }
}

/* ---- sleepers wake in deadline order ---- */
static int order[3], norder;
static uint64_t sleep_base; /* one base for all three: when each thread first runs depends
                               on the host (a slice can end between two of them) */
static void sleeper(void *arg)
{
    int ms = (int)(long)arg;
    thread_sleep_until(sleep_base + (uint64_t)ms * 1000000ull);
    order[norder++] = ms;
}

/* ---- mutex contention with yields ---- */
static mutex_t counter_lock = MUTEX_INIT;
static int counter;
static void bump(void *arg)
{
    (void)arg;
    for (int i = 0; i < 200; i++) {
        mutex_lock(&counter_lock);
        int v = counter;
        thread_yield(); /* others run while we hold the lock: they must block */
        counter = v + 1;
        mutex_unlock(&counter_lock);
    }
}

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    thread_t *t[5];
    for (int i = 0; i < 3; i++)
        t[i] = thread_create(producer, (void *)(long)i, 0);
    for (int i = 3; i < 5; i++)
        t[i] = thread_create(consumer, 0, 0);
    for (int i = 0; i < 5; i++)
        CHECK(t[i] && thread_join(t[i]) == 0, "join worker %d", i);
    CHECK(consumed_done == ITEMS, "consumed %d items", consumed_done);
    CHECK(consumed_sum == (unsigned long)ITEMS * (ITEMS + 1) / 2, "checksum %lu", consumed_sum);

    thread_t *s[3];
    int ms[3] = {30, 10, 20};
    sleep_base = clock_ns();
    for (int i = 0; i < 3; i++)
        s[i] = thread_create(sleeper, (void *)(long)ms[i], 0);
    for (int i = 0; i < 3; i++)
        thread_join(s[i]);
    CHECK(norder == 3 && order[0] == 10 && order[1] == 20 && order[2] == 30,
          "wake order %d,%d,%d", order[0], order[1], order[2]);

    mutex_t lm = MUTEX_INIT;
    cond_t never = COND_INIT;
    mutex_lock(&lm);
    uint64_t deadline = clock_ns() + 20000000ull;
    int r = cond_timedwait(&never, &lm, deadline);
    uint64_t after = clock_ns();
    mutex_unlock(&lm);
    CHECK(r == ETIMEDOUT, "cond_timedwait returned %d", r);
    CHECK(after >= deadline, "cond_timedwait woke %llu ns early", (unsigned long long)(deadline - after));

    thread_t *b[4];
    for (int i = 0; i < 4; i++)
        b[i] = thread_create(bump, 0, 0);
    for (int i = 0; i < 4; i++)
        thread_join(b[i]);
    CHECK(counter == 800, "counter %d", counter);
    CHECK(thread_join(thread_self()) == -1, "self join");

    if (failures)
        return 1;
    printf("SUCCESS\n");
    return 0;
}
