/* signal.c: signal actions, the mask, and delivery with Linux's i386 rt frame.
 *
 * Signals arise inside the personality only: SIGPIPE (a write to a pipe or socket
 * whose reader is gone), SIGALRM (alarm, setitimer), and kill/tgkill/tkill/raise the
 * program sends itself. They are delivered when a system call returns (and a sleep is
 * cut short with EINTR): a handler gets an rt_sigframe on its stack (or on the
 * sigaltstack with SA_ONSTACK) exactly as Linux builds it, and rt_sigreturn restores
 * the interrupted registers and mask. The frame carries no x87/SSE state (fpstate is
 * NULL): a handler that computes in floating point disturbs the interrupted code's
 * registers. Default actions terminate the VM with status 128 + signal (what a shell
 * reports for a program killed by that signal), or ignore (SIGCHLD, SIGCONT, SIGURG,
 * SIGWINCH; the stop signals, since nothing can continue a stopped VM). */
#include <string.h>
#include "lx.h"

#define SIG_DFL 0u
#define SIG_IGN 1u
#define SA_SIGINFO 0x00000004u
#define SA_ONSTACK 0x08000000u
#define SA_RESTORER 0x04000000u
#define SA_NODEFER 0x40000000u
#define SA_RESETHAND 0x80000000u
#define SS_ONSTACK 1
#define SS_DISABLE 2

struct k_sigaction {
    uint32_t handler, flags, restorer;
    uint64_t mask;
};

static struct k_sigaction actions[LX_NSIG];
uint64_t lx_sig_pending;
static uint64_t blocked;
static uint32_t alt_sp, alt_size, alt_flags = SS_DISABLE;
static int suspend_active;   /* rt_sigsuspend returned: restore this mask after delivery */
static uint64_t suspend_saved;

#define BIT(s) (1ull << ((s) - 1))
#define UNBLOCKABLE (BIT(LX_SIGKILL) | BIT(19))

void lx_raise(int sig)
{
    if (sig >= 1 && sig < LX_NSIG)
        lx_sig_pending |= BIT(sig);
}

static int default_ignores(int sig)
{
    return sig == 17 || sig == 18 || sig == 23 || sig == 28 || sig == 19 || sig == 20 ||
           sig == 21 || sig == 22;
}

struct sigcontext {
    uint32_t gs, fs, es, ds, edi, esi, ebp, esp, ebx, edx, ecx, eax;
    uint32_t trapno, err, eip, cs, eflags, esp_at_signal, ss, fpstate, oldmask, cr2;
};
struct ucontext {
    uint32_t flags, link;
    uint32_t ss_sp, ss_flags, ss_size;
    struct sigcontext mc;
    uint64_t sigmask;
};
/* The frame of a handler without SA_SIGINFO (Linux's struct sigframe): its restorer
 * pops sig and calls sigreturn (119); fpstate_unused keeps extramask where Linux has it. */
struct sigframe {
    uint32_t pretcode;
    int32_t sig;
    struct sigcontext sc;
    uint8_t fpstate_unused[624];
    uint32_t extramask;
    uint8_t retcode[8];
};
_Static_assert(__builtin_offsetof(struct sigframe, extramask) == 720, "sigframe");

struct rt_sigframe {
    uint32_t pretcode;
    int32_t sig;
    uint32_t pinfo, puc;
    uint8_t info[128];
    struct ucontext uc;
    uint8_t retcode[8];
};

static uint32_t read_seg(int which)
{
    uint32_t v = 0;
    if (which == 0)
        __asm__ __volatile__("movl %%gs, %0" : "=r"(v));
    else if (which == 1)
        __asm__ __volatile__("movl %%fs, %0" : "=r"(v));
    else if (which == 2)
        __asm__ __volatile__("movl %%ds, %0" : "=r"(v));
    else
        __asm__ __volatile__("movl %%cs, %0" : "=r"(v));
    return v & 0xffff;
}

static void fill_context(struct sigcontext *mc, const struct lx_regs *r, uint64_t back)
{
    mc->gs = read_seg(0);
    mc->fs = read_seg(1);
    mc->es = mc->ds = mc->ss = read_seg(2);
    mc->cs = read_seg(3);
    mc->edi = r->edi, mc->esi = r->esi, mc->ebp = r->ebp, mc->esp = lx_user_esp;
    mc->ebx = r->ebx, mc->edx = r->edx, mc->ecx = r->ecx, mc->eax = r->eax;
    mc->eip = lx_resume_eip;
    mc->eflags = r->eflags;
    mc->esp_at_signal = lx_user_esp;
    mc->oldmask = (uint32_t)back;
}

static void deliver(struct lx_regs *r, int sig)
{
    struct k_sigaction *a = &actions[sig];
    if (!(a->flags & SA_RESTORER)) { /* a return trampoline on the stack would need it executable */
        lx_err("denali-linux: signal %d handler without SA_RESTORER; terminating\n", sig);
        lx_exit(128 + sig);
    }
    uint32_t sp = lx_user_esp;
    if ((a->flags & SA_ONSTACK) && !(alt_flags & SS_DISABLE) && !(sp > alt_sp && sp <= alt_sp + alt_size))
        sp = alt_sp + alt_size;
    int rt = (a->flags & SA_SIGINFO) != 0;
    uint32_t size = rt ? sizeof(struct rt_sigframe) : sizeof(struct sigframe);
    sp -= size;
    sp = ((sp + 4) & ~15u) - 4; /* (sp + 4) 16-aligned at the handler's entry, as Linux does */
    if (!UW(sp, size)) {
        lx_err("denali-linux: no room for the signal %d frame; terminating\n", sig);
        lx_exit(128 + LX_SIGSEGV);
    }
    uint64_t back = suspend_active ? suspend_saved : blocked;
    if (rt) {
        struct rt_sigframe *fr = (struct rt_sigframe *)sp;
        memset(fr, 0, sizeof *fr);
        fr->pretcode = a->restorer;
        fr->sig = sig;
        fr->pinfo = (uint32_t)&fr->info;
        fr->puc = (uint32_t)&fr->uc;
        ((int32_t *)fr->info)[0] = sig;
        ((int32_t *)fr->info)[3] = (int32_t)lx_pid; /* si_pid (SI_USER) */
        fr->uc.ss_sp = alt_sp;
        fr->uc.ss_flags = alt_flags;
        fr->uc.ss_size = alt_size;
        fill_context(&fr->uc.mc, r, back);
        fr->uc.sigmask = back;
        r->edx = fr->pinfo;
        r->ecx = fr->puc;
    } else {
        struct sigframe *fr = (struct sigframe *)sp;
        memset(fr, 0, sizeof *fr);
        fr->pretcode = a->restorer;
        fr->sig = sig;
        fill_context(&fr->sc, r, back);
        fr->extramask = (uint32_t)(back >> 32);
        r->edx = r->ecx = 0;
    }
    uint32_t handler = a->handler;
    blocked |= a->mask;
    if (!(a->flags & SA_NODEFER))
        blocked |= BIT(sig);
    blocked &= ~UNBLOCKABLE;
    if (a->flags & SA_RESETHAND) {
        a->handler = SIG_DFL;
        a->flags &= ~SA_SIGINFO;
    }
    lx_user_esp = sp;
    lx_resume_eip = handler;
    r->eax = (uint32_t)sig;
    r->eflags &= ~0x400u; /* DF clear for the handler */
}

void lx_deliver_signals(struct lx_regs *r)
{
    uint64_t ready = lx_sig_pending & ~blocked;
    while (ready) {
        int sig = 1;
        while (!(ready & BIT(sig)))
            sig++;
        lx_sig_pending &= ~BIT(sig);
        ready &= ~BIT(sig);
        uint32_t h = actions[sig].handler;
        if (h == SIG_IGN || (h == SIG_DFL && default_ignores(sig)))
            continue;
        if (h == SIG_DFL)
            lx_exit(128 + sig);
        deliver(r, sig);
        suspend_active = 0;
        return; /* one frame per return; the next signal is delivered at the next call */
    }
    if (suspend_active) {
        blocked = suspend_saved;
        suspend_active = 0;
    }
}

long sys_rt_sigaction(long sig, long act, long old, long size, long e, long f)
{
    (void)e, (void)f;
    if (sig < 1 || sig >= LX_NSIG || size != 8)
        return -LX_EINVAL;
    if (old) {
        if (!UW(old, sizeof(struct k_sigaction)))
            return -LX_EFAULT;
        memcpy((void *)old, &actions[sig], sizeof(struct k_sigaction));
    }
    if (act) {
        if (sig == LX_SIGKILL || sig == 19)
            return -LX_EINVAL;
        if (!UR(act, sizeof(struct k_sigaction)))
            return -LX_EFAULT;
        memcpy(&actions[sig], (const void *)act, sizeof(struct k_sigaction));
        if (actions[sig].handler == SIG_IGN)
            lx_sig_pending &= ~BIT(sig);
    }
    return 0;
}

long sys_rt_sigprocmask(long how, long set, long old, long size, long e, long f)
{
    (void)e, (void)f;
    if (size != 8)
        return -LX_EINVAL;
    if (old) {
        if (!UW(old, 8))
            return -LX_EFAULT;
    }
    uint64_t prev = blocked;
    if (set) {
        if (!UR(set, 8))
            return -LX_EFAULT;
        uint64_t s = *(const uint64_t *)set;
        if (how == 0)
            blocked |= s;
        else if (how == 1)
            blocked &= ~s;
        else if (how == 2)
            blocked = s;
        else
            return -LX_EINVAL;
        blocked &= ~UNBLOCKABLE;
    }
    if (old)
        *(uint64_t *)old = prev;
    return 0;
}

long sys_rt_sigpending(long set, long size, long c, long d, long e, long f)
{
    (void)c, (void)d, (void)e, (void)f;
    if (size != 8)
        return -LX_EINVAL;
    if (!UW(set, 8))
        return -LX_EFAULT;
    *(uint64_t *)set = lx_sig_pending & blocked;
    return 0;
}

static void restore_context(struct lx_regs *r, const struct sigcontext *mc)
{
    r->edi = mc->edi, r->esi = mc->esi, r->ebp = mc->ebp, r->ebx = mc->ebx;
    r->edx = mc->edx, r->ecx = mc->ecx, r->eax = mc->eax;
    r->eflags = (r->eflags & ~0x00000dd5u) | (mc->eflags & 0x00000dd5u); /* arithmetic flags, DF, TF */
    lx_user_esp = mc->esp;
    lx_resume_eip = mc->eip;
}

long sys_rt_sigreturn(long a, long b, long c, long d, long e, long f)
{
    (void)a, (void)b, (void)c, (void)d, (void)e, (void)f;
    uint32_t fp = lx_user_esp - 4; /* the handler's ret popped pretcode */
    if (!UR(fp, sizeof(struct rt_sigframe))) {
        lx_err("denali-linux: rt_sigreturn with a bad frame; terminating\n");
        lx_exit(128 + LX_SIGSEGV);
    }
    const struct rt_sigframe *fr = (const struct rt_sigframe *)fp;
    restore_context(lx_cur_regs, &fr->uc.mc);
    blocked = fr->uc.sigmask & ~UNBLOCKABLE;
    return 0;
}

long sys_sigreturn(long a, long b, long c, long d, long e, long f)
{
    (void)a, (void)b, (void)c, (void)d, (void)e, (void)f;
    uint32_t fp = lx_user_esp - 8; /* ret popped pretcode, the restorer popped sig */
    if (!UR(fp, sizeof(struct sigframe))) {
        lx_err("denali-linux: sigreturn with a bad frame; terminating\n");
        lx_exit(128 + LX_SIGSEGV);
    }
    const struct sigframe *fr = (const struct sigframe *)fp;
    restore_context(lx_cur_regs, &fr->sc);
    blocked = ((uint64_t)fr->extramask << 32 | fr->sc.oldmask) & ~UNBLOCKABLE;
    return 0;
}

long sys_sigaltstack(long ss, long old, long c, long d, long e, long f)
{
    (void)c, (void)d, (void)e, (void)f;
    if (old) {
        if (!UW(old, 12))
            return -LX_EFAULT;
        uint32_t *o = (uint32_t *)old;
        uint32_t sp = lx_user_esp;
        o[0] = alt_sp;
        o[1] = (alt_flags & SS_DISABLE) ? SS_DISABLE : ((sp > alt_sp && sp <= alt_sp + alt_size) ? SS_ONSTACK : 0);
        o[2] = alt_size;
    }
    if (ss) {
        if (!UR(ss, 12))
            return -LX_EFAULT;
        const uint32_t *n = (const uint32_t *)ss;
        if (n[1] & ~(uint32_t)SS_DISABLE)
            return -LX_EINVAL;
        if (n[1] & SS_DISABLE) {
            alt_flags = SS_DISABLE;
            alt_sp = alt_size = 0;
        } else {
            if (n[2] < 2048)
                return -LX_ENOMEM;
            alt_sp = n[0], alt_size = n[2], alt_flags = 0;
        }
    }
    return 0;
}

long sys_rt_sigsuspend(long set, long size, long c, long d, long e, long f)
{
    (void)c, (void)d, (void)e, (void)f;
    if (size != 8)
        return -LX_EINVAL;
    if (!UR(set, 8))
        return -LX_EFAULT;
    uint64_t saved = blocked;
    blocked = *(const uint64_t *)set & ~UNBLOCKABLE;
    while (!(lx_sig_pending & ~blocked)) {
        uint64_t dl = lx_alarm_deadline();
        if (!dl) {
            lx_err("denali-linux: sigsuspend with no signal that could arrive; terminating\n");
            lx_exit(128 + LX_SIGKILL);
        }
        thread_sleep_until(dl);
        lx_check_alarm();
    }
    suspend_saved = saved; /* lx_syscall delivers; the frame then restores this mask */
    suspend_active = 1;
    return -LX_EINTR;
}

long sys_pause(long a, long b, long c, long d, long e, long f)
{
    (void)a, (void)b, (void)c, (void)d, (void)e, (void)f;
    while (!(lx_sig_pending & ~blocked)) {
        uint64_t dl = lx_alarm_deadline();
        if (!dl) {
            lx_err("denali-linux: pause with no signal that could arrive; terminating\n");
            lx_exit(128 + LX_SIGKILL);
        }
        thread_sleep_until(dl);
        lx_check_alarm();
    }
    return -LX_EINTR;
}

static long send_self(long sig)
{
    if (sig < 0 || sig >= LX_NSIG)
        return -LX_EINVAL;
    if (sig)
        lx_raise((int)sig);
    return 0;
}

long sys_kill(long pid, long sig, long c, long d, long e, long f)
{
    (void)c, (void)d, (void)e, (void)f;
    if (pid != (long)lx_pid && pid != 0 && pid != -1)
        return -LX_ESRCH;
    return send_self(sig);
}

long sys_tgkill(long tgid, long tid, long sig, long d, long e, long f)
{
    (void)d, (void)e, (void)f;
    if (tgid != (long)lx_pid || tid != (long)lx_pid)
        return -LX_ESRCH;
    return send_self(sig);
}

long sys_tkill(long tid, long sig, long c, long d, long e, long f)
{
    (void)c, (void)d, (void)e, (void)f;
    if (tid != (long)lx_pid)
        return -LX_ESRCH;
    return send_self(sig);
}
