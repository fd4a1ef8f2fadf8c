/* _preempt.c: the two hooks of the Python CPU that must be written in C.
 *
 * 1. denali_block_hook: how a slice is preempted without corrupting the guest.
 *
 * Unicorn 2.1 checks for an exit request not only at the start of every translated
 * block but also right after every guest load and store, and an exit taken there
 * resumes at the instruction that made the access: an instruction that reads, then
 * writes memory (add %eax, (%ebx)), or writes it and then a register (xchg), is run
 * twice when the engine is restarted. uc_emu_stop from another thread can land at any
 * of those points, so the watchdog never calls it. It sets the engine's stop flag
 * instead, and this block hook, which runs at the start of every translated block
 * (with the program counter written back), stops the engine from its own thread: the
 * exit is then taken at the block's start, where nothing of the block has run.
 *
 * 2. denali_intr_hook: the engine's interrupt hook. It applies SYSCALL_ENTRY's routing
 * rule (denali/cpu.py) itself: an int $0x80 whose instruction lies outside the
 * personality's code range stores its resume EIP at `save` and continues at `entry`,
 * without entering Python (a routed system call costs what Unicorn's exception path
 * costs; in Python it cost a ctypes callback and three register calls). Everything
 * else (hypercalls, CPU exceptions, and any int $0x80 once the CPU recorded a fault in
 * this slice) goes to the Python callback. Writing EIP from the hook makes Unicorn
 * leave the translated code and continue at the new EIP within the same
 * uc_emu_start; that also drops a stop requested earlier in that run, which is why a
 * recorded fault turns routing off (its stop must land), while a dropped preemption
 * costs nothing: the stop flag stays set and the next block start stops the engine.
 *
 * 3. The CLOCK hypercall (the one a guest makes most: its TCP stack reads the clock
 * several times per segment) is answered in denali_intr_hook too, while the CPU allows
 * it (denali/cpu.py, "the native clock"): no monitor interposes on CLOCK, or those
 * that do only record it, and the argument structure (its one u64, now_ns) lies on one
 * of the pages the CPU found writable for a CLOCK (it forgets them whenever a
 * permission is lowered or dirty-page tracking runs). Any other CLOCK, and every other
 * hypercall, goes to the Python callback. With a log set
 * (a monitor that only records CLOCKs, such as the tracer) each answer also appends
 * its value there, and the monitor layer hands the values over before the VM's next
 * event; a full log sends CLOCK to Python, which empties it first.
 *
 * Built by the install step into the package (setup.py); loaded by denali/_uc.py.
 */
#include <stdint.h>
#include <string.h>
#include <time.h>

#define CLOCK_PAGES 16

struct denali_stop_cell {
    volatile int32_t flag;      /* set by the watchdog: stop at the next block start;
                                   cleared by the CPU before each slice */
    int32_t reserved;
    int (*emu_stop)(void *uc);  /* libunicorn's uc_emu_stop */
};

void denali_block_hook(void *uc, uint64_t address, uint32_t size, void *user_data)
{
    struct denali_stop_cell *cell = user_data;
    (void)address;
    (void)size;
    if (cell->flag)
        cell->emu_stop(uc);
}

struct denali_route {
    uint32_t entry;             /* 0: every int $0x80 is a hypercall */
    uint32_t save;              /* where the resume EIP goes (4 bytes inside memory) */
    uint32_t code_lo, code_hi;  /* the personality's code: its int $0x80s are hypercalls */
    volatile int32_t faulted;   /* set by the CPU once it recorded a fault in this slice */
    int32_t eip_reg;            /* UC_X86_REG_EIP */
    uint64_t routed;            /* system calls routed so far */
    uint8_t *mem;               /* guest memory and its size */
    uint64_t mem_size;
    int (*reg_read)(void *uc, int regid, void *value);
    int (*reg_write)(void *uc, int regid, const void *value);
    void (*fallback)(void *uc, uint32_t intno, void *user_data);  /* the Python callback */
    void *fallback_data;
    uint32_t vector;            /* the hypercall vector (0x80) */
    uint32_t clock_nr;          /* CLOCK's number; 0: every hypercall goes to Python */
    int32_t eax_reg, ebx_reg;   /* UC_X86_REG_EAX, UC_X86_REG_EBX */
    uint32_t clock_pages[CLOCK_PAGES];  /* page numbers + 1 where a CLOCK structure may be
                                   written here (checked by the CPU); 0: none. A few,
                                   since each guest thread makes its calls on its stack */
    int64_t clock_zero;         /* the VM's clock reads CLOCK_MONOTONIC minus this (ns) */
    uint64_t clocks;            /* CLOCK hypercalls answered here */
    int64_t *log;               /* when set: each CLOCK answered here appends its value (a
                                   monitor records them); full: CLOCK goes to Python */
    uint32_t log_cap, log_len;
};

/* CLOCK answered without Python (see 3. above); 0 when it must go to Python. */
static int native_clock(void *uc, struct denali_route *r)
{
    uint32_t nr = 0, arg = 0, ok = 0;
    struct timespec ts;
    if (r->reg_read(uc, r->eax_reg, &nr) != 0 || nr != r->clock_nr)
        return 0;
    if (r->reg_read(uc, r->ebx_reg, &arg) != 0)
        return 0;
    if ((arg & 0xFFF) > 0x1000 - 8 || (uint64_t)arg + 8 > r->mem_size)
        return 0;
    uint32_t page = (arg >> 12) + 1, i = 0;
    while (i < CLOCK_PAGES && r->clock_pages[i] != page)
        i++;
    if (i == CLOCK_PAGES)
        return 0;
    if (r->log && r->log_len >= r->log_cap)
        return 0;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
        return 0;
    int64_t now = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec - r->clock_zero;
    memcpy(r->mem + arg, &now, 8);
    if (r->reg_write(uc, r->eax_reg, &ok) != 0)
        return 0;
    r->clocks++;
    if (r->log)
        r->log[r->log_len++] = now;
    return 1;
}

void denali_intr_hook(void *uc, uint32_t intno, void *user_data)
{
    struct denali_route *r = user_data;
    if (intno == 0x80 && r->entry && !r->faulted) {
        uint32_t eip = 0;
        if (r->reg_read(uc, r->eip_reg, &eip) == 0) {
            uint32_t at = eip - 2;  /* int $0x80 is two bytes; EIP is past it */
            if ((at < r->code_lo || at >= r->code_hi) && (uint64_t)r->save + 4 <= r->mem_size) {
                memcpy(r->mem + r->save, &eip, 4);
                r->routed++;
                r->reg_write(uc, r->eip_reg, &r->entry);
                return;
            }
        }
    }
    if (intno == r->vector && r->clock_nr && !r->faulted && native_clock(uc, r))
        return;
    r->fallback(uc, intno, r->fallback_data);
}
