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
 * Built by the install step into the package (setup.py); loaded by denali/_uc.py.
 */
#include <stdint.h>
#include <string.h>

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
};

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
    r->fallback(uc, intno, r->fallback_data);
}
