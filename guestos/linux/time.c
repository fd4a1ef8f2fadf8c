/* time.c: clocks, sleeping and interval timers on the virtual clock.
 *
 * CLOCK_MONOTONIC (and BOOTTIME, the CPU-time clocks) are the kernel's monotonic clock
 * (the CLOCK hypercall); CLOCK_REALTIME is that plus the Unix time the host gave at
 * boot (lx.epoch, lx.epoch_ns). Sleeping is the guestos scheduler's
 * thread_sleep_until, which idles the VM with the deadline (idle-with-timeout), so a
 * sleeping program costs its host nothing. alarm/setitimer(ITIMER_REAL) raise SIGALRM,
 * delivered when the program next makes a system call or sleeps. */
#include <string.h>
#include "lx.h"

static uint64_t epoch_ns;
static uint64_t alarm_at, alarm_interval;

struct lx_timespec32 { int32_t tv_sec, tv_nsec; };
struct lx_timespec64 { int64_t tv_sec; int64_t tv_nsec; };
struct lx_timeval { int32_t tv_sec, tv_usec; };

void time_init(void)
{
    uint32_t s = 0, ns = 0;
    lx_cmdline_u32("lx.epoch", &s);
    lx_cmdline_u32("lx.epoch_ns", &ns);
    epoch_ns = (uint64_t)s * 1000000000ull + ns;
}

uint64_t lx_realtime_ns(void)
{
    return epoch_ns + clock_ns();
}

static int clock_read(long id, uint64_t *ns)
{
    switch (id) {
    case 0: case 5: case 8: /* REALTIME, REALTIME_COARSE, REALTIME_ALARM */
        *ns = lx_realtime_ns();
        return 0;
    case 1: case 2: case 3: case 4: case 6: case 7: case 9: /* MONOTONIC.., CPUTIME, BOOTTIME */
        *ns = clock_ns();
        return 0;
    default:
        return -LX_EINVAL;
    }
}

long sys_clock_gettime(long id, long tp, long c, long d, long e, long f)
{
    (void)c, (void)d, (void)e, (void)f;
    uint64_t ns;
    int r = clock_read(id, &ns);
    if (r)
        return r;
    if (!UW(tp, sizeof(struct lx_timespec32)))
        return -LX_EFAULT;
    struct lx_timespec32 *t = (struct lx_timespec32 *)tp;
    t->tv_sec = (int32_t)(ns / 1000000000ull);
    t->tv_nsec = (int32_t)(ns % 1000000000ull);
    return 0;
}

long sys_clock_gettime64(long id, long tp, long c, long d, long e, long f)
{
    (void)c, (void)d, (void)e, (void)f;
    uint64_t ns;
    int r = clock_read(id, &ns);
    if (r)
        return r;
    if (!UW(tp, sizeof(struct lx_timespec64)))
        return -LX_EFAULT;
    struct lx_timespec64 *t = (struct lx_timespec64 *)tp;
    t->tv_sec = (int64_t)(ns / 1000000000ull);
    t->tv_nsec = (int64_t)(ns % 1000000000ull);
    return 0;
}

long sys_clock_getres(long id, long tp, long c, long d, long e, long f)
{
    (void)c, (void)d, (void)e, (void)f;
    uint64_t ns;
    if (clock_read(id, &ns))
        return -LX_EINVAL;
    if (tp) {
        if (!UW(tp, 8))
            return -LX_EFAULT;
        ((struct lx_timespec32 *)tp)->tv_sec = 0;
        ((struct lx_timespec32 *)tp)->tv_nsec = 1;
    }
    return 0;
}

long sys_clock_getres64(long id, long tp, long c, long d, long e, long f)
{
    (void)c, (void)d, (void)e, (void)f;
    uint64_t ns;
    if (clock_read(id, &ns))
        return -LX_EINVAL;
    if (tp) {
        if (!UW(tp, 16))
            return -LX_EFAULT;
        ((struct lx_timespec64 *)tp)->tv_sec = 0;
        ((struct lx_timespec64 *)tp)->tv_nsec = 1;
    }
    return 0;
}

long sys_gettimeofday(long tv, long tz, long c, long d, long e, long f)
{
    (void)c, (void)d, (void)e, (void)f;
    uint64_t ns = lx_realtime_ns();
    if (tv) {
        if (!UW(tv, 8))
            return -LX_EFAULT;
        ((struct lx_timeval *)tv)->tv_sec = (int32_t)(ns / 1000000000ull);
        ((struct lx_timeval *)tv)->tv_usec = (int32_t)(ns % 1000000000ull / 1000);
    }
    if (tz) {
        if (!UW(tz, 8))
            return -LX_EFAULT;
        memset((void *)tz, 0, 8);
    }
    return 0;
}

long sys_time(long tp, long b, long c, long d, long e, long f)
{
    (void)b, (void)c, (void)d, (void)e, (void)f;
    int32_t t = (int32_t)(lx_realtime_ns() / 1000000000ull);
    if (tp) {
        if (!UW(tp, 4))
            return -LX_EFAULT;
        *(int32_t *)tp = t;
    }
    return t;
}

/* Sleeps until the kernel-clock deadline, a signal, or (with rem) records what is left. */
static long sleep_until(uint64_t deadline)
{
    while (clock_ns() < deadline) {
        if (lx_sig_pending)
            return -LX_EINTR;
        uint64_t wake = deadline;
        if (alarm_at && alarm_at - epoch_ns < wake)
            wake = alarm_at - epoch_ns;
        thread_sleep_until(wake);
        lx_check_alarm();
    }
    return 0;
}

void lx_check_alarm(void)
{
    if (alarm_at && lx_realtime_ns() >= alarm_at) {
        alarm_at = alarm_interval ? alarm_at + alarm_interval : 0;
        lx_raise(LX_SIGALRM);
    }
}

uint64_t lx_alarm_deadline(void)
{
    return alarm_at ? alarm_at - epoch_ns : 0;
}

static long do_nanosleep(int64_t sec, int64_t nsec, uint64_t base)
{
    if (sec < 0 || nsec < 0 || nsec >= 1000000000)
        return -LX_EINVAL;
    uint64_t now = clock_ns();
    uint64_t deadline = base + (uint64_t)sec * 1000000000ull + (uint64_t)nsec;
    if (deadline < now)
        return 0;
    return sleep_until(deadline);
}

long sys_nanosleep(long req, long rem, long c, long d, long e, long f)
{
    (void)rem, (void)c, (void)d, (void)e, (void)f;
    if (!UR(req, 8))
        return -LX_EFAULT;
    const struct lx_timespec32 *t = (const struct lx_timespec32 *)req;
    return do_nanosleep(t->tv_sec, t->tv_nsec, clock_ns());
}

static long clock_sleep(long id, long flags, int64_t sec, int64_t nsec)
{
    uint64_t now;
    if (clock_read(id, &now))
        return -LX_EINVAL;
    uint64_t mono = clock_ns();
    if (flags & 1) { /* TIMER_ABSTIME: convert to the kernel clock */
        int64_t target = sec * 1000000000ll + nsec;
        int64_t delta = target - (int64_t)now;
        if (delta <= 0)
            return 0;
        uint64_t ud = (uint64_t)delta;
        return do_nanosleep((int64_t)(ud / 1000000000ull), (int64_t)(ud % 1000000000ull), mono);
    }
    return do_nanosleep(sec, nsec, mono);
}

long sys_clock_nanosleep(long id, long flags, long req, long rem, long e, long f)
{
    (void)rem, (void)e, (void)f;
    if (!UR(req, 8))
        return -LX_EFAULT;
    const struct lx_timespec32 *t = (const struct lx_timespec32 *)req;
    long r = clock_sleep(id, flags, t->tv_sec, t->tv_nsec);
    return r < 0 ? -r : r; /* clock_nanosleep returns the error number itself */
}

long sys_clock_nanosleep64(long id, long flags, long req, long rem, long e, long f)
{
    (void)rem, (void)e, (void)f;
    if (!UR(req, 16))
        return -LX_EFAULT;
    const struct lx_timespec64 *t = (const struct lx_timespec64 *)req;
    long r = clock_sleep(id, flags, t->tv_sec, t->tv_nsec);
    return r < 0 ? -r : r;
}

long sys_times(long buf, long b, long c, long d, long e, long f)
{
    (void)b, (void)c, (void)d, (void)e, (void)f;
    uint32_t ticks = (uint32_t)(clock_ns() / 10000000ull);
    if (buf) {
        if (!UW(buf, 16))
            return -LX_EFAULT;
        uint32_t *t = (uint32_t *)buf;
        t[0] = ticks; /* the VM's whole life is this process's user time */
        t[1] = t[2] = t[3] = 0;
    }
    return (long)ticks;
}

long sys_getrusage(long who, long buf, long c, long d, long e, long f)
{
    (void)c, (void)d, (void)e, (void)f;
    if (who != 0 && who != -1 && who != 1)
        return -LX_EINVAL;
    if (!UW(buf, 72))
        return -LX_EFAULT;
    memset((void *)buf, 0, 72);
    if (who != -1) {
        uint64_t us = clock_ns() / 1000;
        ((int32_t *)buf)[0] = (int32_t)(us / 1000000);
        ((int32_t *)buf)[1] = (int32_t)(us % 1000000);
    }
    return 0;
}

long sys_alarm(long secs, long b, long c, long d, long e, long f)
{
    (void)b, (void)c, (void)d, (void)e, (void)f;
    uint64_t now = lx_realtime_ns();
    long left = alarm_at > now ? (long)((alarm_at - now + 999999999ull) / 1000000000ull) : 0;
    alarm_at = secs ? now + (uint64_t)(uint32_t)secs * 1000000000ull : 0;
    alarm_interval = 0;
    return left;
}

struct lx_itimerval { struct lx_timeval interval, value; };

static void tv_from_ns(struct lx_timeval *tv, uint64_t ns)
{
    tv->tv_sec = (int32_t)(ns / 1000000000ull);
    tv->tv_usec = (int32_t)(ns % 1000000000ull / 1000);
}

long sys_getitimer(long which, long cur, long c, long d, long e, long f)
{
    (void)c, (void)d, (void)e, (void)f;
    if (which != 0)
        return -LX_EINVAL;
    if (!UW(cur, sizeof(struct lx_itimerval)))
        return -LX_EFAULT;
    struct lx_itimerval *it = (struct lx_itimerval *)cur;
    uint64_t now = lx_realtime_ns();
    tv_from_ns(&it->interval, alarm_interval);
    tv_from_ns(&it->value, alarm_at > now ? alarm_at - now : 0);
    return 0;
}

long sys_setitimer(long which, long nv, long old, long d, long e, long f)
{
    (void)d, (void)e, (void)f;
    if (which != 0)
        return -LX_EINVAL; /* only ITIMER_REAL */
    if (old) {
        long r = sys_getitimer(0, old, 0, 0, 0, 0);
        if (r)
            return r;
    }
    if (!nv)
        return 0;
    if (!UR(nv, sizeof(struct lx_itimerval)))
        return -LX_EFAULT;
    const struct lx_itimerval *it = (const struct lx_itimerval *)nv;
    uint64_t value = (uint64_t)it->value.tv_sec * 1000000000ull + (uint64_t)it->value.tv_usec * 1000ull;
    alarm_interval = (uint64_t)it->interval.tv_sec * 1000000000ull + (uint64_t)it->interval.tv_usec * 1000ull;
    alarm_at = value ? lx_realtime_ns() + value : 0;
    return 0;
}
