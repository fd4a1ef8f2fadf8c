/* main.c: boot of the Linux personality, then the program.
 *
 * The host (denali/linux/) loaded the program's segments at their link addresses and
 * wrote its initial stack (argc, argv, envp, the aux vector, the strings) at the top of
 * guest memory; the command line tells where things are:
 *   lx.entry=  the program's entry point      lx.sp=    its initial ESP
 *   lx.brk=    first byte after its segments  lx.stack= lowest byte of its stack area
 *   lx.auxv=   address of the aux vector      lx.epoch= Unix time (s) at kernel time 0
 *   lx.epoch_ns= the sub-second part (ns)    lx.cwd=   working directory
 *   lx.trace=1 / lx.report=1                  ip=, gw= (guestos net, optional)
 * The personality completes the aux vector (AT_RANDOM bytes from the host's random
 * source, AT_HWCAP from this CPU's CPUID), mounts the disks, opens fds 0-2 on the
 * console, registers lx_entry with SYSCALL_ENTRY and jumps to the program. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "lx.h"

#define AT_NULL 0
#define AT_HWCAP 16
#define AT_RANDOM 25

uint32_t lx_pid = 2;
void lx_report_init(void);

static uint32_t need(const char *key)
{
    uint32_t v;
    if (!lx_cmdline_u32(key, &v)) {
        lx_err("denali-linux: the command line lacks %s\n", key);
        exit(127);
    }
    return v;
}

static uint32_t cpuid_edx(void)
{
    uint32_t a = 1, b, c = 0, d;
    __asm__ __volatile__("cpuid" : "+a"(a), "=b"(b), "+c"(c), "=d"(d));
    return d;
}

static void finish_auxv(uint32_t auxv)
{
    uint32_t *p = (uint32_t *)auxv;
    for (int i = 0; i < 64 && p[0] != AT_NULL; i++, p += 2) {
        if (p[0] == AT_HWCAP)
            p[1] = cpuid_edx();
        else if (p[0] == AT_RANDOM && p[1] >= LX_PROGRAM_BASE)
            lx_random((void *)p[1], 16);
    }
}

void lx_random(void *buf, size_t n)
{
    uint8_t *b = buf;
    while (n) {
        size_t k = n > DENALI_RANDOM_MAX ? DENALI_RANDOM_MAX : n;
        struct denali_hc_random r = {(uint32_t)b, (uint32_t)k};
        denali_hc_random(&r);
        b += k;
        n -= k;
    }
}

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    lx_report_init();
    uint32_t entry = need("lx.entry"), sp = need("lx.sp"), brk = need("lx.brk");
    uint32_t stack_lo = need("lx.stack"), auxv = need("lx.auxv");
    time_init();
    mm_init(brk, stack_lo, DENALI_VREGS->mem_size);
    fd_init();
    vfs_init();
    sock_init();
    finish_auxv(auxv);
    struct denali_hc_syscall_entry se = {(uint32_t)lx_entry, (uint32_t)&lx_resume_eip,
                                         DENALI_ADDR_IMAGE_BASE, LX_PROGRAM_BASE};
    if (denali_hc_syscall_entry(&se) != DENALI_OK) {
        lx_err("denali-linux: SYSCALL_ENTRY refused\n");
        exit(127);
    }
    lx_enter_program(entry, sp);
}

__attribute__((noreturn)) void lx_exit(int status)
{
    vfs_sync();
    sock_linger();
    lx_report();
    exit(status & 0xff);
}
