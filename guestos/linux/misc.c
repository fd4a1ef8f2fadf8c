/* misc.c: the process and the system as the program sees them: identity (one process,
 * pid 2, uid/gid 0), uname, limits, sysinfo, thread-local storage (set_thread_area on
 * the kernel's TLS descriptors), randomness, exit. fork/vfork/clone/execve are not in
 * the table (ENOSYS): one program per VM. */
#include <string.h>
#include "lx.h"

long sys_zero(long a, long b, long c, long d, long e, long f)
{
    (void)a, (void)b, (void)c, (void)d, (void)e, (void)f;
    return 0;
}

long sys_getpid(long a, long b, long c, long d, long e, long f)
{
    (void)a, (void)b, (void)c, (void)d, (void)e, (void)f;
    return (long)lx_pid;
}

long sys_getppid(long a, long b, long c, long d, long e, long f)
{
    (void)a, (void)b, (void)c, (void)d, (void)e, (void)f;
    return 1;
}

long sys_getpgrp(long a, long b, long c, long d, long e, long f)
{
    (void)a, (void)b, (void)c, (void)d, (void)e, (void)f;
    return (long)lx_pid;
}

long sys_getuid(long a, long b, long c, long d, long e, long f)
{
    (void)a, (void)b, (void)c, (void)d, (void)e, (void)f;
    return 0;
}

long sys_getresuid(long a, long b, long c, long d, long e, long f)
{
    (void)d, (void)e, (void)f;
    if (!UW(a, 4) || !UW(b, 4) || !UW(c, 4))
        return -LX_EFAULT;
    *(uint32_t *)a = *(uint32_t *)b = *(uint32_t *)c = 0;
    return 0;
}

long sys_getgroups(long n, long list, long c, long d, long e, long f)
{
    (void)list, (void)c, (void)d, (void)e, (void)f;
    return n < 0 ? -LX_EINVAL : 0;
}

long sys_set_tid_address(long a, long b, long c, long d, long e, long f)
{
    (void)a, (void)b, (void)c, (void)d, (void)e, (void)f;
    return (long)lx_pid;
}

long sys_set_robust_list(long a, long b, long c, long d, long e, long f)
{
    (void)a, (void)c, (void)d, (void)e, (void)f;
    return b == 12 ? 0 : -LX_EINVAL;
}

long sys_personality(long a, long b, long c, long d, long e, long f)
{
    (void)b, (void)c, (void)d, (void)e, (void)f;
    return a == -1 || a == 0 ? 0 : -LX_EINVAL;
}

long sys_prctl(long opt, long b, long c, long d, long e, long f)
{
    (void)b, (void)c, (void)d, (void)e, (void)f;
    if (opt == 15 || opt == 16) /* PR_SET_NAME, PR_GET_NAME */
        return 0;
    return -LX_EINVAL;
}

long sys_wait4(long a, long b, long c, long d, long e, long f)
{
    (void)a, (void)b, (void)c, (void)d, (void)e, (void)f;
    return -LX_ECHILD;
}

long sys_sched_yield(long a, long b, long c, long d, long e, long f)
{
    (void)a, (void)b, (void)c, (void)d, (void)e, (void)f;
    thread_yield();
    return 0;
}

long sys_sched_getaffinity(long pid, long len, long mask, long d, long e, long f)
{
    (void)pid, (void)d, (void)e, (void)f;
    if (len < 4)
        return -LX_EINVAL;
    if (!UW(mask, 4))
        return -LX_EFAULT;
    *(uint32_t *)mask = 1; /* one virtual CPU */
    return 4;
}

long sys_getcpu(long cpu, long node, long c, long d, long e, long f)
{
    (void)c, (void)d, (void)e, (void)f;
    if (cpu) {
        if (!UW(cpu, 4))
            return -LX_EFAULT;
        *(uint32_t *)cpu = 0;
    }
    if (node) {
        if (!UW(node, 4))
            return -LX_EFAULT;
        *(uint32_t *)node = 0;
    }
    return 0;
}

/* futex: one thread, so a wait whose value still matches could never be woken. */
long sys_futex(long uaddr, long op, long val, long d, long e, long f)
{
    (void)d, (void)e, (void)f;
    int cmd = (int)(op & 0x7f);
    if (cmd == 1) /* FUTEX_WAKE */
        return 0;
    if (cmd == 0 || cmd == 9) { /* FUTEX_WAIT, FUTEX_WAIT_BITSET */
        if (!UR(uaddr, 4))
            return -LX_EFAULT;
        if (*(const int32_t *)uaddr != (int32_t)val)
            return -LX_EAGAIN;
        return -LX_ETIMEDOUT; /* nobody else could ever wake it */
    }
    return -LX_ENOSYS;
}

struct utsname { char f[6][65]; };

long sys_uname(long buf, long b, long c, long d, long e, long f)
{
    (void)b, (void)c, (void)d, (void)e, (void)f;
    if (!UW(buf, sizeof(struct utsname)))
        return -LX_EFAULT;
    struct utsname *u = (struct utsname *)buf;
    static const char *const v[6] = {"Linux", "denali", "6.1.0-denali", "#1 denali personality",
                                     "i686", "(none)"};
    memset(u, 0, sizeof *u);
    for (int i = 0; i < 6; i++)
        strlcpy(u->f[i], v[i], 65);
    char host[65];
    if (cmdline_get("lx.hostname", host, sizeof host) > 0)
        strlcpy(u->f[1], host, 65);
    return 0;
}

/* ---- thread-local storage ---- */
struct user_desc {
    uint32_t entry_number, base_addr, limit, flags;
};
#define UD_LIMIT_IN_PAGES 0x10
#define UD_SEG_NOT_PRESENT 0x20
#define UD_CONTENTS 0x06
#define UD_READ_EXEC_ONLY 0x08

static struct user_desc tls[DENALI_TLS_ENTRIES];

long sys_set_thread_area(long u, long b, long c, long d, long e, long f)
{
    (void)b, (void)c, (void)d, (void)e, (void)f;
    if (!UW(u, sizeof(struct user_desc)))
        return -LX_EFAULT;
    struct user_desc *ud = (struct user_desc *)u;
    uint32_t idx = ud->entry_number;
    if (idx == 0xffffffffu) {
        for (idx = DENALI_TLS_FIRST_ENTRY; idx < DENALI_TLS_FIRST_ENTRY + DENALI_TLS_ENTRIES; idx++)
            if (!tls[idx - DENALI_TLS_FIRST_ENTRY].flags && !tls[idx - DENALI_TLS_FIRST_ENTRY].base_addr)
                break;
        if (idx == DENALI_TLS_FIRST_ENTRY + DENALI_TLS_ENTRIES)
            return -LX_ESRCH;
    }
    if (idx < DENALI_TLS_FIRST_ENTRY || idx >= DENALI_TLS_FIRST_ENTRY + DENALI_TLS_ENTRIES)
        return -LX_EINVAL;
    if ((ud->flags & UD_CONTENTS) || (ud->flags & UD_READ_EXEC_ONLY))
        return -LX_EINVAL; /* only writable data segments */
    int empty = (ud->flags & UD_SEG_NOT_PRESENT) || (!ud->base_addr && !ud->limit);
    struct denali_hc_set_tls st = {idx, ud->base_addr, ud->limit & 0xfffff,
                                   (empty ? DENALI_TLS_F_EMPTY : 0) |
                                       ((ud->flags & UD_LIMIT_IN_PAGES) ? DENALI_TLS_F_PAGES : 0)};
    if (denali_hc_set_tls(&st) != DENALI_OK)
        return -LX_EINVAL;
    tls[idx - DENALI_TLS_FIRST_ENTRY] = *ud;
    tls[idx - DENALI_TLS_FIRST_ENTRY].entry_number = idx;
    if (empty)
        memset(&tls[idx - DENALI_TLS_FIRST_ENTRY], 0, sizeof tls[0]);
    ud->entry_number = idx;
    return 0;
}

long sys_get_thread_area(long u, long b, long c, long d, long e, long f)
{
    (void)b, (void)c, (void)d, (void)e, (void)f;
    if (!UW(u, sizeof(struct user_desc)))
        return -LX_EFAULT;
    struct user_desc *ud = (struct user_desc *)u;
    uint32_t idx = ud->entry_number;
    if (idx < DENALI_TLS_FIRST_ENTRY || idx >= DENALI_TLS_FIRST_ENTRY + DENALI_TLS_ENTRIES)
        return -LX_EINVAL;
    *ud = tls[idx - DENALI_TLS_FIRST_ENTRY];
    ud->entry_number = idx;
    return 0;
}

long sys_getrandom(long buf, long n, long flags, long d, long e, long f)
{
    (void)d, (void)e, (void)f;
    if (flags & ~7)
        return -LX_EINVAL;
    if (n < 0)
        return -LX_EINVAL;
    if (!UW(buf, n))
        return -LX_EFAULT;
    lx_random((void *)buf, (size_t)n);
    return n;
}

/* ---- limits ---- */
#define RLIM_INF 0xffffffffffffffffull
static uint64_t rlim[16][2];
static int rlim_ready;

static void rlim_init(void)
{
    if (rlim_ready)
        return;
    rlim_ready = 1;
    for (int i = 0; i < 16; i++)
        rlim[i][0] = rlim[i][1] = RLIM_INF;
    rlim[3][0] = 8u << 20;                  /* RLIMIT_STACK */
    rlim[4][0] = rlim[4][1] = 0;            /* RLIMIT_CORE */
    rlim[6][0] = rlim[6][1] = 1;            /* RLIMIT_NPROC: this one */
    rlim[7][0] = rlim[7][1] = LX_FD_MAX;    /* RLIMIT_NOFILE */
    rlim[8][0] = rlim[8][1] = 64u << 10;    /* RLIMIT_MEMLOCK */
}

long sys_prlimit64(long pid, long res, long nl, long old, long e, long f)
{
    (void)e, (void)f;
    if (pid && pid != (long)lx_pid)
        return -LX_ESRCH;
    if (res < 0 || res >= 16)
        return -LX_EINVAL;
    rlim_init();
    if (old) {
        if (!UW(old, 16))
            return -LX_EFAULT;
        ((uint64_t *)old)[0] = rlim[res][0];
        ((uint64_t *)old)[1] = rlim[res][1];
    }
    if (nl) {
        if (!UR(nl, 16))
            return -LX_EFAULT;
        const uint64_t *n = (const uint64_t *)nl;
        if (n[0] > n[1] || n[1] > rlim[res][1])
            return -LX_EINVAL;
        rlim[res][0] = n[0];
        rlim[res][1] = n[1];
    }
    return 0;
}

long sys_getrlimit(long res, long buf, long c, long d, long e, long f)
{
    (void)c, (void)d, (void)e, (void)f;
    if (res < 0 || res >= 16)
        return -LX_EINVAL;
    if (!UW(buf, 8))
        return -LX_EFAULT;
    rlim_init();
    for (int i = 0; i < 2; i++)
        ((uint32_t *)buf)[i] = rlim[res][i] > 0xffffffffull ? 0xffffffffu : (uint32_t)rlim[res][i];
    return 0;
}

long sys_setrlimit(long res, long buf, long c, long d, long e, long f)
{
    (void)c, (void)d, (void)e, (void)f;
    if (!UR(buf, 8))
        return -LX_EFAULT;
    uint64_t n[2];
    for (int i = 0; i < 2; i++) {
        uint32_t v = ((const uint32_t *)buf)[i];
        n[i] = v == 0xffffffffu ? RLIM_INF : v;
    }
    static uint64_t tmp[2];
    tmp[0] = n[0], tmp[1] = n[1];
    rlim_init();
    if (res < 0 || res >= 16)
        return -LX_EINVAL;
    if (tmp[0] > tmp[1] || tmp[1] > rlim[res][1])
        return -LX_EINVAL;
    rlim[res][0] = tmp[0];
    rlim[res][1] = tmp[1];
    return 0;
}

struct lx_sysinfo {
    int32_t uptime;
    uint32_t loads[3];
    uint32_t totalram, freeram, sharedram, bufferram, totalswap, freeswap;
    uint16_t procs, pad;
    uint32_t totalhigh, freehigh, mem_unit;
    char f[8];
};

long sys_sysinfo(long buf, long b, long c, long d, long e, long f)
{
    (void)b, (void)c, (void)d, (void)e, (void)f;
    if (!UW(buf, sizeof(struct lx_sysinfo)))
        return -LX_EFAULT;
    struct lx_sysinfo *s = (struct lx_sysinfo *)buf;
    memset(s, 0, sizeof *s);
    uint32_t mapped;
    mm_stats(&mapped);
    s->uptime = (int32_t)(clock_ns() / 1000000000ull);
    s->totalram = DENALI_VREGS->mem_size - LX_PROGRAM_BASE;
    s->freeram = s->totalram > mapped ? s->totalram - mapped : 0;
    s->procs = 1;
    s->mem_unit = 1;
    return 0;
}

long sys_exit(long status, long b, long c, long d, long e, long f)
{
    (void)b, (void)c, (void)d, (void)e, (void)f;
    lx_exit((int)status);
}

long sys_exit_group(long status, long b, long c, long d, long e, long f)
{
    (void)b, (void)c, (void)d, (void)e, (void)f;
    lx_exit((int)status);
}
