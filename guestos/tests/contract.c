/* test-contract: checks the kernel keeps the contract of docs/virtual-architecture.md.
 *   mode=vregs        scribble over every kernel field of the register page, yield, and
 *                     check the kernel rewrote them; a CLOCK whose output would land on
 *                     them is refused with FAULT; one in the guest's part of the page works
 *   mode=timer n=N ms=M   N one-shot timers M ms ahead: the TIMER bit never arrives
 *                     before CLOCK reads the deadline; prints "early=K"
 *   mode=idle n=N ms=M    N idles with an M ms deadline and nothing pending: IDLE never
 *                     returns before the deadline; prints "early=K"
 *   mode=fpu          loads x87 and SSE registers, idles until the host interrupts (the
 *                     host may swap the VM out meanwhile), checks they came back
 * Exit status 0 and "SUCCESS" when the contract held. */
#include <ilwaco.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;
#define CHECK(c, ...) do { if (!(c)) { printf("FAIL: " __VA_ARGS__); printf("\n"); failures++; } } while (0)

static void yield(void)
{
    struct denali_hc_idle y = {1, 0, 0, 0};
    denali_hc_idle(&y);
}

static void vregs(void)
{
    volatile struct denali_vregs *v = DENALI_VREGS;
    struct denali_vregs before = *(struct denali_vregs *)DENALI_VREGS;
    /* every kernel field, and then some: the whole block but irq_enable */
    volatile uint8_t *p = (volatile uint8_t *)DENALI_VREGS;
    for (unsigned i = 0; i < sizeof(struct denali_vregs); i++)
        if (i < __builtin_offsetof(struct denali_vregs, irq_enable) ||
            i >= __builtin_offsetof(struct denali_vregs, irq_enable) + 4)
            p[i] = 0xA5;
    yield();
    CHECK(v->magic == DENALI_VREGS_MAGIC, "magic %x", v->magic);
    CHECK(v->abi_version == DENALI_ABI_VERSION, "abi %u", v->abi_version);
    CHECK(v->vm_id == before.vm_id, "vm_id %u", v->vm_id);
    CHECK(v->mem_size == before.mem_size, "mem_size %u", v->mem_size);
    CHECK(v->heap_start == before.heap_start && v->heap_end == before.heap_end, "heap %x-%x",
          v->heap_start, v->heap_end);
    CHECK(v->cmdline_len == before.cmdline_len, "cmdline_len %u", v->cmdline_len);
    CHECK(v->cpu_khz == before.cpu_khz && v->slice_ns == before.slice_ns, "khz/slice");
    CHECK(!memcmp((const void *)v->mac, before.mac, 6), "mac");
    CHECK(v->_pad0 == 0 && v->generation == 0, "padding and generation");
    CHECK(v->time_ns >= before.time_ns && v->time_ns < before.time_ns + 60000000000ull, "time");
    /* a hypercall output over the kernel fields: refused, nothing written */
    int r = denali_hypercall(DENALI_HC_CLOCK, (void *)DENALI_VREGS);
    CHECK(r == DENALI_FAULT, "CLOCK over the register fields returned %d", r);
    CHECK(v->magic == DENALI_VREGS_MAGIC, "CLOCK overwrote magic");
    /* the guest's part of the page (the command line area) is the guest's */
    struct denali_hc_clock *c = (struct denali_hc_clock *)((char *)DENALI_VREGS + 0xF00);
    r = denali_hc_clock(c);
    CHECK(r == DENALI_OK && c->now_ns > 0, "CLOCK in the guest's part of the page: %d", r);
}

static void timers(unsigned n, uint64_t ms, int idle)
{
    unsigned early = 0;
    unsigned turn = 0;
    struct denali_hc_idle ids[2]; /* mode=timer: two structures in turn, so each IDLE must be
                                     answered in the one it names */
    for (unsigned i = 0; i < n; i++) {
        uint64_t deadline = clock_ns() + ms * 1000000ull;
        if (idle) {
            struct denali_hc_idle id = {deadline, 0, 0, 0};
            denali_hc_idle(&id);
            if (id.pending == 0 && (id.now_ns < deadline || clock_ns() < deadline))
                early++;
            while (clock_ns() < deadline) { /* an interrupt woke us: wait the rest */
                struct denali_hc_idle again = {deadline, 0, 0, 0};
                denali_hc_idle(&again);
            }
        } else {
            struct denali_hc_timer_set t = {deadline};
            denali_hc_timer_set(&t);
            uint32_t got = 0;
            while (!(got & DENALI_IRQ_TIMER)) {
                struct denali_hc_idle *id = &ids[turn++ & 1];
                *id = (struct denali_hc_idle){0, 0, 0, 0};
                denali_hc_idle(id);
                got |= id->pending;
            }
            if (clock_ns() < deadline)
                early++;
        }
    }
    printf("early=%u of %u\n", early, n);
    CHECK(early == 0, "%u early wake-ups", early);
}

static struct {
    uint8_t xmm_in[128];   /* 0 */
    uint8_t xmm_out[128];  /* 128 */
    uint32_t x87_in[4];    /* 256 */
    uint32_t x87_out[4];   /* 272 */
    struct denali_hc_idle id; /* 288 */
} f = {.xmm_in = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 0xff, 0xee, [40] = 7, [127] = 0x55},
       .x87_in = {12345, 678910, 111, 99999}};

static void fpu(void)
{
    for (int i = 0; i < 128; i++)
        if (!f.xmm_in[i])
            f.xmm_in[i] = (uint8_t)(i * 7 + 1);
    __asm__ volatile(
        "fninit\n"
        "fildl 256(%%esi)\n fildl 260(%%esi)\n fildl 264(%%esi)\n fildl 268(%%esi)\n"
        "movdqu 0(%%esi), %%xmm0\n movdqu 16(%%esi), %%xmm1\n movdqu 32(%%esi), %%xmm2\n"
        "movdqu 48(%%esi), %%xmm3\n movdqu 64(%%esi), %%xmm4\n movdqu 80(%%esi), %%xmm5\n"
        "movdqu 96(%%esi), %%xmm6\n movdqu 112(%%esi), %%xmm7\n"
        "1: movl %[nr], %%eax\n leal 288(%%esi), %%ebx\n int $0x80\n"
        "testl %[host], 304(%%esi)\n jz 1b\n"
        "movdqu %%xmm0, 128(%%esi)\n movdqu %%xmm1, 144(%%esi)\n movdqu %%xmm2, 160(%%esi)\n"
        "movdqu %%xmm3, 176(%%esi)\n movdqu %%xmm4, 192(%%esi)\n movdqu %%xmm5, 208(%%esi)\n"
        "movdqu %%xmm6, 224(%%esi)\n movdqu %%xmm7, 240(%%esi)\n"
        "fistpl 284(%%esi)\n fistpl 280(%%esi)\n fistpl 276(%%esi)\n fistpl 272(%%esi)\n"
        :
        : "S"(&f), [nr] "i"(DENALI_HC_IDLE), [host] "i"(DENALI_IRQ_HOST)
        : "eax", "ebx", "memory", "cc");
    CHECK(f.id.pending & DENALI_IRQ_HOST, "woken without the host bit: %x", f.id.pending);
    CHECK(!memcmp(f.xmm_in, f.xmm_out, sizeof f.xmm_in), "SSE registers changed");
    CHECK(!memcmp(f.x87_in, f.x87_out, sizeof f.x87_in), "x87 registers changed: %u %u %u %u",
          f.x87_out[0], f.x87_out[1], f.x87_out[2], f.x87_out[3]);
}

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    char mode[16], v[24];
    if (cmdline_get("mode", mode, sizeof mode) < 0) {
        printf("usage: mode=vregs|timer|idle|fpu\n");
        return 2;
    }
    unsigned n = cmdline_get("n", v, sizeof v) >= 0 ? strtoul(v, 0, 10) : 10;
    uint64_t ms = cmdline_get("ms", v, sizeof v) >= 0 ? strtoul(v, 0, 10) : 50;
    if (!strcmp(mode, "vregs"))
        vregs();
    else if (!strcmp(mode, "timer"))
        timers(n, ms, 0);
    else if (!strcmp(mode, "idle"))
        timers(n, ms, 1);
    else if (!strcmp(mode, "fpu"))
        fpu();
    else {
        printf("unknown mode %s\n", mode);
        return 2;
    }
    if (failures)
        return 1;
    printf("SUCCESS\n");
    return 0;
}
