/* syscall.c: the Linux i386 system-call table, its dispatcher, the trace and the
 * report of unimplemented calls.
 *
 * Every number without a handler returns -ENOSYS and is counted per number; with
 * lx.trace=1 on the command line every call is printed on the error stream as it
 * returns, and with lx.trace=1 or lx.report=1 the counts of unimplemented calls are
 * printed when the program exits ("denali-linux: enosys NAME (NR) xCOUNT"). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "lx.h"

#define NR_MAX 450

struct entry {
    lx_call_t fn;
    const char *name;
};

#define E(nr, f) [nr] = {f, #f}
#define N(nr, nm) [nr] = {0, nm}

static const struct entry table[NR_MAX] = {
    E(1, sys_exit), N(2, "fork"), E(3, sys_read), E(4, sys_write), E(5, sys_open),
    E(6, sys_close), N(7, "waitpid"), E(8, sys_creat), E(9, sys_link), E(10, sys_unlink),
    N(11, "execve"), E(12, sys_chdir), E(13, sys_time), N(14, "mknod"), E(15, sys_chmod),
    E(19, sys_lseek), E(20, sys_getpid), E(24, sys_getuid), E(27, sys_alarm),
    E(29, sys_pause), E(33, sys_access), E(36, sys_sync), E(37, sys_kill), E(38, sys_rename),
    E(39, sys_mkdir), E(40, sys_rmdir), E(41, sys_dup), E(42, sys_pipe), E(43, sys_times),
    E(45, sys_brk), E(47, sys_getuid), E(49, sys_getuid), E(50, sys_getuid),
    E(54, sys_ioctl), E(55, sys_fcntl64), E(57, sys_zero), E(60, sys_umask), E(63, sys_dup2),
    E(64, sys_getppid), E(65, sys_getpgrp), E(66, sys_getpid), E(75, sys_setrlimit),
    E(76, sys_getrlimit), E(77, sys_getrusage), E(78, sys_gettimeofday), E(82, sys_old_select),
    E(83, sys_symlink), E(85, sys_readlink), E(90, sys_old_mmap), E(91, sys_munmap),
    E(92, sys_truncate), E(93, sys_ftruncate), E(94, sys_fchmod), E(102, sys_socketcall), E(104, sys_setitimer),
    E(105, sys_getitimer), E(114, sys_wait4), E(116, sys_sysinfo), E(118, sys_fsync), E(119, sys_sigreturn),
    N(120, "clone"), E(122, sys_uname), E(125, sys_mprotect), E(132, sys_getpgrp),
    E(133, sys_fchdir), E(136, sys_personality), E(140, sys_llseek), E(142, sys_select),
    E(143, sys_zero), E(145, sys_readv), E(146, sys_writev), E(147, sys_getpid),
    E(148, sys_fsync), E(158, sys_sched_yield), E(162, sys_nanosleep), E(163, sys_mremap),
    E(168, sys_poll), E(172, sys_prctl), E(173, sys_rt_sigreturn), E(174, sys_rt_sigaction),
    E(175, sys_rt_sigprocmask), E(176, sys_rt_sigpending), E(179, sys_rt_sigsuspend),
    E(180, sys_pread64), E(181, sys_pwrite64), E(182, sys_chown), E(183, sys_getcwd),
    E(186, sys_sigaltstack), N(190, "vfork"), E(191, sys_getrlimit), E(192, sys_mmap2),
    E(193, sys_truncate64), E(194, sys_ftruncate64), E(195, sys_stat64), E(196, sys_lstat64),
    E(197, sys_fstat64), E(198, sys_chown), E(199, sys_getuid), E(200, sys_getuid),
    E(201, sys_getuid), E(202, sys_getuid), E(205, sys_getgroups), E(207, sys_fchown),
    E(209, sys_getresuid), E(211, sys_getresuid), E(212, sys_chown), E(213, sys_zero),
    E(214, sys_zero), E(219, sys_madvise), E(220, sys_getdents64), E(221, sys_fcntl64),
    E(224, sys_getpid), E(238, sys_tkill), E(239, sys_sendfile64), E(240, sys_futex),
    E(242, sys_sched_getaffinity), E(243, sys_set_thread_area), E(244, sys_get_thread_area),
    E(250, sys_zero), E(252, sys_exit_group), E(258, sys_set_tid_address),
    E(265, sys_clock_gettime), E(266, sys_clock_getres), E(267, sys_clock_nanosleep),
    E(268, sys_statfs64), E(269, sys_fstatfs64), E(270, sys_tgkill), E(272, sys_zero),
    E(295, sys_openat), E(296, sys_mkdirat), E(298, sys_fchownat), E(300, sys_fstatat64),
    E(301, sys_unlinkat), E(302, sys_renameat), E(303, sys_linkat), E(304, sys_symlinkat),
    E(305, sys_readlinkat), E(306, sys_fchmodat), E(307, sys_faccessat), E(308, sys_pselect6),
    E(309, sys_ppoll), E(311, sys_set_robust_list), E(318, sys_getcpu), E(320, sys_utimensat),
    E(330, sys_dup3), E(331, sys_pipe2), E(340, sys_prlimit64), E(353, sys_renameat2),
    E(355, sys_getrandom), E(359, sys_socket), E(360, sys_socketpair), E(361, sys_bind),
    E(362, sys_connect), E(363, sys_listen), E(364, sys_accept4), E(365, sys_getsockopt),
    E(366, sys_setsockopt), E(367, sys_getsockname), E(368, sys_getpeername),
    E(369, sys_sendto), E(370, sys_sendmsg), E(371, sys_recvfrom), E(372, sys_recvmsg),
    E(373, sys_shutdown), E(383, sys_statx), N(384, "arch_prctl"), N(386, "rseq"),
    E(403, sys_clock_gettime64), E(406, sys_clock_getres64), E(407, sys_clock_nanosleep64),
    E(412, sys_utimensat64), E(413, sys_pselect6_64), E(414, sys_ppoll64),
    E(422, sys_futex), N(435, "clone3"), E(439, sys_faccessat2),
};

int lx_trace;
static int lx_report_on;
static uint32_t nosys_count[NR_MAX + 1];
struct lx_regs *lx_cur_regs;

static const char *name_of(uint32_t nr)
{
    if (nr < NR_MAX && table[nr].name)
        return table[nr].name + (strncmp(table[nr].name, "sys_", 4) ? 0 : 4);
    return "?";
}

void lx_syscall(struct lx_regs *r)
{
    uint32_t nr = r->eax;
    long ret;
    lx_cur_regs = r;
    lx_call_t fn = nr < NR_MAX ? table[nr].fn : 0;
    if (fn) {
        ret = fn((long)r->ebx, (long)r->ecx, (long)r->edx, (long)r->esi, (long)r->edi, (long)r->ebp);
    } else {
        nosys_count[nr < NR_MAX ? nr : NR_MAX]++;
        ret = -LX_ENOSYS;
    }
    if (lx_trace)
        lx_err("[lx] %s(%u)(0x%x, 0x%x, 0x%x, 0x%x) = %ld\n", name_of(nr), nr, r->ebx, r->ecx,
               r->edx, r->esi, ret);
    if (nr != 173 && nr != 119) /* (rt_)sigreturn restores the whole frame itself */
        r->eax = (uint32_t)ret;
    if (lx_sig_pending)
        lx_deliver_signals(r);
}

void lx_report(void)
{
    if (!lx_trace && !lx_report_on)
        return;
    for (uint32_t nr = 0; nr <= NR_MAX; nr++)
        if (nosys_count[nr])
            lx_err("denali-linux: enosys %s (%u) x%u\n", nr < NR_MAX ? name_of(nr) : "out-of-range",
                   nr, nosys_count[nr]);
}

void lx_report_init(void);
void lx_report_init(void)
{
    uint32_t v;
    if (lx_cmdline_u32("lx.trace", &v) && v)
        lx_trace = 1;
    if (lx_cmdline_u32("lx.report", &v) && v)
        lx_report_on = 1;
}

/* ---- the error and output streams ---- */
void lx_write_err(const void *buf, size_t len)
{
    const char *p = buf;
    while (len) {
        size_t k = len > DENALI_CONSOLE_MAX_WRITE ? DENALI_CONSOLE_MAX_WRITE : len;
        struct denali_hc_console_write_err w = {(uint32_t)p, (uint32_t)k};
        denali_hc_console_write_err(&w);
        p += k;
        len -= k;
    }
}

void lx_write_out(const void *buf, size_t len)
{
    console_write(buf, len);
}

void lx_err(const char *fmt, ...)
{
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n > (int)sizeof buf - 1)
        n = sizeof buf - 1;
    if (n > 0)
        lx_write_err(buf, (size_t)n);
}

int lx_cmdline_u32(const char *key, uint32_t *out)
{
    char v[24];
    if (cmdline_get(key, v, sizeof v) < 0)
        return 0;
    *out = (uint32_t)strtoul(v, 0, 0);
    return 1;
}
