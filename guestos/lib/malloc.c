/* malloc.c: the heap allocator over [vregs.heap_start, vregs.heap_end).
 * Blocks are laid end to end, each with a 16-byte header (size including the header,
 * used flag), so every payload is 16-byte aligned. First fit from the bottom (the search
 * starts at a rover below which every block is in use); adjacent free blocks are merged
 * lazily while searching and when freeing. Bytes in use are counted as they change.
 * Freed blocks of up to QUICK_MAX bytes go on a free list of their exact size instead
 * (LIFO, not merged), so a server that allocates and frees the same sizes per request
 * (thread stacks, connection state) gets them back in O(1), the memory still warm; when a
 * first-fit search fails, every listed block is returned to the heap and merged first. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <denali/abi.h>
#include "internal.h"

struct block {
    uint32_t size;  /* bytes, header included, multiple of 16 */
    uint32_t used;  /* 0 free, 1 in use, 2 on a quick list (free, not merged) */
    uint32_t magic;
    uint32_t next;  /* quick list link */
};

#define HDR sizeof(struct block)
#define MAGIC 0x4d414c4cu
#define ALIGN16(x) (((x) + 15u) & ~15u)

static uint8_t *heap_lo, *heap_hi;
static int heap_ok;
static struct block *rover; /* INVARIANT: every block below it is in use */
static size_t used_bytes;
#define QUICK_MAX 16400
static struct block *quick[QUICK_MAX / 16 + 1];
static int quick_count;

void __heap_init(void)
{
    heap_lo = (uint8_t *)ALIGN16(DENALI_VREGS->heap_start);
    heap_hi = (uint8_t *)(DENALI_VREGS->heap_end & ~15u);
    if (heap_hi <= heap_lo + HDR) {
        heap_hi = heap_lo;
        return;
    }
    struct block *b = (struct block *)heap_lo;
    b->size = (uint32_t)(heap_hi - heap_lo);
    b->used = 0;
    b->magic = MAGIC;
    rover = b;
    heap_ok = 1;
}

static struct block *next_of(struct block *b)
{
    uint8_t *n = (uint8_t *)b + b->size;
    return n < heap_hi ? (struct block *)n : 0;
}

static void merge_following(struct block *b)
{
    struct block *n;
    while ((n = next_of(b)) && !n->used)
        b->size += n->size;
}

static void quick_flush(void)
{
    for (size_t i = 0; i <= QUICK_MAX / 16; i++) {
        while (quick[i]) {
            struct block *b = quick[i];
            quick[i] = (struct block *)b->next;
            b->used = 0;
            if (b < rover)
                rover = b;
        }
    }
    quick_count = 0;
    for (struct block *b = rover; b; b = next_of(b))
        if (!b->used)
            merge_following(b);
}

static void *first_fit(uint32_t need);

void *malloc(size_t n)
{
    if (!heap_ok || n == 0 || n > (size_t)(heap_hi - heap_lo))
        return 0;
    uint32_t need = ALIGN16((uint32_t)n) + HDR;
    if (need <= QUICK_MAX && quick[need / 16]) {
        struct block *b = quick[need / 16];
        quick[need / 16] = (struct block *)b->next;
        quick_count--;
        b->used = 1;
        used_bytes += b->size;
        return (uint8_t *)b + HDR;
    }
    void *p = first_fit(need);
    if (!p && quick_count) {
        quick_flush();
        p = first_fit(need);
    }
    return p;
}

static void *first_fit(uint32_t need)
{
    int below_all_used = 1;
    for (struct block *b = rover; b; b = next_of(b)) {
        if (b->used) {
            if (below_all_used)
                rover = next_of(b) ? next_of(b) : rover;
            continue;
        }
        below_all_used = 0;
        merge_following(b);
        if (b->size < need)
            continue;
        if (b->size - need >= HDR + 16) {
            struct block *rest = (struct block *)((uint8_t *)b + need);
            rest->size = b->size - need;
            rest->used = 0;
            rest->magic = MAGIC;
            b->size = need;
        }
        b->used = 1;
        used_bytes += b->size;
        if (b == rover && next_of(b))
            rover = next_of(b);
        return (uint8_t *)b + HDR;
    }
    return 0;
}

void free(void *p)
{
    if (!p)
        return;
    struct block *b = (struct block *)((uint8_t *)p - HDR);
    if ((uint8_t *)b < heap_lo || (uint8_t *)b >= heap_hi || b->magic != MAGIC || b->used != 1) {
        printf("free: bad pointer %p\n", p);
        abort();
    }
    used_bytes -= b->size;
    if (b->size <= QUICK_MAX) {
        b->used = 2;
        b->next = (uint32_t)quick[b->size / 16];
        quick[b->size / 16] = b;
        quick_count++;
        return;
    }
    b->used = 0;
    merge_following(b);
    if (b < rover)
        rover = b;
}

void *calloc(size_t count, size_t size)
{
    if (size && count > (size_t)-1 / size)
        return 0;
    void *p = malloc(count * size);
    if (p)
        memset(p, 0, count * size);
    return p;
}

void *realloc(void *p, size_t n)
{
    if (!p)
        return malloc(n);
    if (n == 0) {
        free(p);
        return 0;
    }
    struct block *b = (struct block *)((uint8_t *)p - HDR);
    size_t have = b->size - HDR;
    if (have >= n)
        return p;
    void *q = malloc(n);
    if (!q)
        return 0;
    memcpy(q, p, have);
    free(p);
    return q;
}

size_t heap_used_bytes(void)
{
    return used_bytes;
}

size_t heap_free_bytes(void)
{
    size_t total = 0;
    if (quick_count)
        quick_flush(); /* so the answer is the merged heap's, as before the lists */
    for (struct block *b = heap_ok ? (struct block *)heap_lo : 0; b; b = next_of(b)) {
        if (!b->used) {
            merge_following(b);
            total += b->size - HDR;
        } else if (b->used == 2) {
            total += b->size - HDR;
        }
    }
    return total;
}
