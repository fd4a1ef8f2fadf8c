/* _preempt.c: how a slice is preempted without corrupting the guest.
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
 * Built by the install step into the package (setup.py); loaded by denali/_uc.py.
 */
#include <stdint.h>

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
