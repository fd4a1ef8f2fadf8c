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
 * 4. NET_SEND is answered here too while the CPU allows it (denali/cpu.py, "the native
 * send"): no monitor interposes on it or on the frames sent, no dirty-page tracking
 * runs, and the whole batch passes every check the Python path makes (the structure
 * readable and writable and clear of the register page's kernel fields, the
 * descriptor array and every frame readable, each length 60..1514, at most 64
 * frames) against the page-permission map of the VM's memory (one byte per page,
 * kept by denali/memory.py), fits the transmit buffer and the credit (frames the
 * port's queue in the switch still takes: the CPU sets it before each slice). The
 * frames are copied into the buffer (a u16 length, then the bytes) and the guest gets
 * OK with every frame sent; the CPU hands the buffer to the NIC at the end of the
 * slice and before any NET_SEND takes the Python path, so frames keep their order.
 * A batch that fails any test goes to Python whole, which answers it as before. With
 * no buffer yet, the hook asks for one (tx_want) and sends the call to Python.
 *
 * 5. For every hypercall it hands to Python the hook leaves the number and the
 * structure's address (EAX, EBX) in the route, and writes EAX itself when the callback
 * left a result there (hc_answer): the Python path makes no register call of its own.
 *
 * 6. denali_run starts a slice: one call from Python instead of one per register and
 * flag (the result of a hypercall completed between slices, the stop flag, EIP after).
 * It also tells the watchdog (9.) that the slice runs, and until when.
 *
 * 10. A monitor that only records calls (the tracer) keeps NET_SEND and TIMER_SET on
 * this path: each answer then appends a record (the structure before and after, the
 * VM's clock, and how many CLOCKs the clock log held, so the two logs merge in order)
 * to the call log, and a full log sends them to Python, which empties both logs first.
 *
 * 9. The watchdog: one thread per kernel, written here so that it never needs Python's
 * GIL (a Python thread waking every poll interval took the GIL from the thread running
 * the slices and made every release of it a futex wake-up). It sleeps until the
 * earliest deadline of the lanes that run a slice, sets the stop flag of each slice
 * past its deadline (the block hook, 1., stops the engine), again every retry_ns until
 * the slice ends, polls every poll_ns for slices that started meanwhile, and after
 * dormant_after_ns without a slice starting waits on a condition variable that
 * denali_run signals. A lane's engine is only ever flagged under the watchdog's lock
 * while the lane says a slice runs, and denali_run clears that under the same lock
 * before it returns, so the flag of a closed engine is never touched.
 *
 * 7. TIMER_SET, while the CPU allows it (no monitor interposes on it), is answered here
 * when its structure is readable: the deadline is kept in the route and the owner arms
 * the VM's timer with it right after the slice (or before a TIMER_SET that takes the
 * Python path), before anything could observe the timer: interrupts reach a VM only
 * between its slices. `work` tells the owner, in one read per slice, whether anything
 * of 4. or 7. waits for it.
 *
 * 8. IDLE always ends the slice, and its work (waiting, the out fields) is the VM
 * coroutine's, after it. While no monitor interposes on IDLE, the hook takes that exit
 * itself when the structure passes the check the Python path makes (readable and
 * writable, clear of the kernel fields): it stops the engine and leaves the call in
 * hc_nr/hc_arg with idle_exit set, which the CPU reads when the slice returns. While
 * the CPU asks for it (idle_answers: no monitor records IDLE), an IDLE whose deadline
 * has passed (a yield) also gets its out fields here, the clock and no bits pending
 * (idle_exit 2): the owner then only writes EAX, unless interrupts are pending after
 * all, when it answers the call as the Python path does (overwriting both fields).
 *
 * 11. CONSOLE_WRITE, while the CPU allows it (no monitor interposes on it), is answered
 * here when its structure and the bytes are readable and the bytes fit the console
 * buffer (given at a VM's first CONSOLE_WRITE; a write longer than what is left goes to
 * Python, and so does one past CONSOLE_MAX_WRITE, which the buffer is smaller than):
 * they are copied there, and the owner hands them to the console after the slice and
 * before any console write that takes the Python path.
 *
 * 12. The sleepers: VMs waiting in IDLE whose wake-ups the kernel hands to C (denali/vm.py,
 * "native sleep"), one heap for all of them, keyed by when each is due (the earlier of
 * its timer and its IDLE deadline, on CLOCK_MONOTONIC). denali_sleepers_fire takes the
 * due ones off it; told to run them, it does for each what the Python path does for a
 * VM woken by its timer: the TIMER bit (if the timer came) and the clock go to the
 * IDLE's out fields, OK to EAX, the register page's kernel fields are rewritten, and one
 * slice runs (denali_run). A slice that ends in another IDLE that waits (nothing
 * pending, its deadline not come), having never entered Python, with no work for the
 * owner but a timer it armed, goes back on the heap with that timer; every other
 * sleeper is handed back (why: DUE, not run; SLICE, the slice's end is the owner's;
 * WAIT, it waits with no deadline, which only an interrupt ends). The owner keeps
 * everything else: a sleeper only exists while the VM is plain (no monitor, no pause,
 * resident, no dirty tracking) and the owner takes it off the heap (unpark) before
 * anything else looks at or changes the VM; asked while its slice runs (from a Python
 * callback of that slice), unpark only marks it, and it is handed back when the slice
 * ends.
 *
 * Built by the install step into the package (setup.py); loaded by denali/_uc.py.
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CLOCK_PAGES 16
#define NET_MIN_FRAME 60
#define NET_MTU 1514
#define NET_MAX_BATCH 64
#define PROT_R 1
#define PROT_W 2
#define WORK_TX 1     /* frames in the transmit buffer, or a buffer wanted */
#define WORK_TIMER 2  /* a timer armed */
#define WORK_CONSOLE 4  /* bytes in the console buffer, or a buffer wanted */

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
    uint32_t send_nr;           /* NET_SEND's number; 0: every NET_SEND goes to Python */
    uint32_t tx_credit;         /* frames the port still takes in this slice */
    const uint8_t *prot;        /* the page-permission map: PROT_R | PROT_W per page */
    uint32_t pages;             /* its length */
    uint32_t kfields_lo, kfields_hi;  /* never written for the guest: [lo, hi) */
    uint8_t *tx_buf;            /* the transmit buffer: (u16 length, bytes) per frame */
    uint32_t tx_cap, tx_len;    /* its size and the bytes it holds */
    uint32_t tx_frames;         /* the frames it holds */
    uint32_t tx_want;           /* set here when a NET_SEND found no buffer */
    uint64_t sends;             /* NET_SEND hypercalls answered here */
    uint32_t hc_nr, hc_arg;     /* the hypercall handed to the Python callback (EAX, EBX) */
    uint32_t hc_answer;         /* set by the callback: EAX gets hc_result once it returns */
    uint32_t hc_result;
    int (*emu_start)(void *uc, uint64_t begin, uint64_t until, uint64_t timeout, size_t count);
    uint32_t eax_pending;       /* set between slices: EAX gets eax_value when the next starts */
    uint32_t eax_value;
    uint32_t eip;               /* EIP where the last slice stopped (denali_run) */
    uint32_t work;              /* WORK_* bits set here when the owner has work after the
                                   slice: frames in the buffer or a buffer wanted (TX), a
                                   timer armed (TIMER), bytes written or a buffer wanted
                                   (CONSOLE) */
    uint32_t timer_nr;          /* TIMER_SET's number; 0: every TIMER_SET goes to Python */
    uint32_t timer_armed;       /* set here: the guest armed timer_deadline in this slice */
    uint64_t timer_deadline;    /* on the VM's clock (ns; 0 disarms) */
    uint64_t timers;            /* TIMER_SET hypercalls answered here */
    uint32_t idle_nr;           /* IDLE's number; 0: every IDLE goes to Python */
    uint32_t idle_exit;         /* set here: the slice ended at the IDLE hc_nr/hc_arg hold */
    uint64_t idles;             /* IDLE hypercalls whose exit was taken here */
    int (*emu_stop)(void *uc);  /* libunicorn's uc_emu_stop */
    struct denali_call_record *calls;  /* when set: each NET_SEND and TIMER_SET answered here
                                   appends a record (a monitor records them); full: they
                                   go to Python */
    uint32_t calls_cap, calls_len;
    uint32_t console_nr;        /* CONSOLE_WRITE's number; 0: every one goes to Python */
    uint32_t con_want;          /* set here when a CONSOLE_WRITE found no buffer */
    uint8_t *con_buf;           /* the console buffer: the bytes written, in order */
    uint32_t con_cap, con_len;  /* its size and the bytes it holds */
    uint64_t consoles;          /* CONSOLE_WRITE hypercalls answered here */
    uint32_t idle_answers;      /* set: an IDLE whose deadline passed gets its out fields
                                   here (idle_exit 2), see 8. */
    uint32_t fallbacks;         /* calls of the Python callback so far (wrapping): a
                                   sleeper's slice that made none never entered Python */
};

/* A NET_SEND or TIMER_SET the hook answered, for a monitor that records them (10.). */
struct denali_call_record {
    uint32_t nr;
    uint32_t clock_pos;         /* the CLOCK log's length then: the CLOCKs before it */
    int64_t t;                  /* the VM's clock at the call (ns) */
    uint8_t before[16];         /* the structure before the call */
    uint8_t after[16];          /* and after it */
};

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* The VM's clock (ns): CLOCK_MONOTONIC minus its zero. */
static int64_t vm_clock(const struct denali_route *r)
{
    return mono_ns() - r->clock_zero;
}

/* CLOCK at `arg` answered without Python (see 3. above); 0 when it must go to Python. */
static int native_clock(void *uc, struct denali_route *r, uint32_t arg)
{
    uint32_t ok = 0;
    if ((arg & 0xFFF) > 0x1000 - 8 || (uint64_t)arg + 8 > r->mem_size)
        return 0;
    uint32_t page = (arg >> 12) + 1, i = 0;
    while (i < CLOCK_PAGES && r->clock_pages[i] != page)
        i++;
    if (i == CLOCK_PAGES)
        return 0;
    if (r->log && r->log_len >= r->log_cap)
        return 0;
    int64_t now = vm_clock(r);
    memcpy(r->mem + arg, &now, 8);
    if (r->reg_write(uc, r->eax_reg, &ok) != 0)
        return 0;
    r->clocks++;
    if (r->log)
        r->log[r->log_len++] = now;
    return 1;
}

/* Every byte of [addr, addr + len) on pages with all of `need` (and, for writing, clear
 * of the kernel fields): the rule of GuestMemory.check. */
static int range_ok(const struct denali_route *r, uint32_t addr, uint32_t len, uint8_t need)
{
    uint64_t end = (uint64_t)addr + len;
    if (len == 0)
        return 1;
    if (end > r->mem_size || !r->prot)
        return 0;
    if ((need & PROT_W) && addr < r->kfields_hi && end > r->kfields_lo)
        return 0;
    for (uint64_t p = addr >> 12; p <= (end - 1) >> 12; p++)
        if (p >= r->pages || (r->prot[p] & need) != need)
            return 0;
    return 1;
}

/* The record of a call being answered (10.), its `before` filled from `arg`; NULL when
 * no log is kept. Only called once the call is certain to be answered here. */
static struct denali_call_record *record(struct denali_route *r, uint32_t nr, uint32_t arg, uint32_t size)
{
    if (!r->calls)
        return NULL;
    struct denali_call_record *c = &r->calls[r->calls_len++];
    c->nr = nr;
    c->clock_pos = r->log_len;
    c->t = vm_clock(r);
    memset(c->before, 0, sizeof c->before);
    memcpy(c->before, r->mem + arg, size);
    memset(c->after, 0, sizeof c->after);
    return c;
}

/* NET_SEND at `arg` answered without Python (see 4. above); 0 when it must go to Python. */
static int native_send(void *uc, struct denali_route *r, uint32_t arg)
{
    uint32_t hdr[2], d[2], ok = 0, need = 0;
    if (!r->tx_buf) {
        r->tx_want = 1;
        r->work |= WORK_TX;
        return 0;
    }
    if (!range_ok(r, arg, 16, PROT_R | PROT_W))
        return 0;
    memcpy(hdr, r->mem + arg, 8);
    uint32_t at = hdr[0], count = hdr[1];
    if (count == 0 || count > NET_MAX_BATCH || count > r->tx_credit)
        return 0;
    if (!range_ok(r, at, count * 8, PROT_R))
        return 0;
    for (uint32_t i = 0; i < count; i++) {
        memcpy(d, r->mem + at + 8 * i, 8);
        if (d[1] < NET_MIN_FRAME || d[1] > NET_MTU || !range_ok(r, d[0], d[1], PROT_R))
            return 0;
        need += 2 + d[1];
    }
    if (need > r->tx_cap - r->tx_len)
        return 0;
    if (r->calls && r->calls_len >= r->calls_cap)
        return 0;
    if (r->reg_write(uc, r->eax_reg, &ok) != 0)  /* before anything is taken */
        return 0;
    struct denali_call_record *c = record(r, r->send_nr, arg, 16);
    for (uint32_t i = 0; i < count; i++) {  /* the guest is stopped: nothing moved */
        uint16_t len;
        memcpy(d, r->mem + at + 8 * i, 8);
        len = (uint16_t)d[1];
        memcpy(r->tx_buf + r->tx_len, &len, 2);
        memcpy(r->tx_buf + r->tx_len + 2, r->mem + d[0], len);
        r->tx_len += 2 + len;
    }
    memcpy(r->mem + arg + 8, &count, 4);  /* sent */
    if (c)
        memcpy(c->after, r->mem + arg, 16);
    r->tx_credit -= count;
    r->tx_frames += count;
    r->sends++;
    r->work |= WORK_TX;
    return 1;
}

/* TIMER_SET at `arg` answered without Python (see 7. above); 0 when it must go to Python. */
static int native_timer(void *uc, struct denali_route *r, uint32_t arg)
{
    uint64_t deadline;
    uint32_t ok = 0;
    if (!range_ok(r, arg, 8, PROT_R))
        return 0;
    if (r->calls && r->calls_len >= r->calls_cap)
        return 0;
    memcpy(&deadline, r->mem + arg, 8);
    if (r->reg_write(uc, r->eax_reg, &ok) != 0)
        return 0;
    record(r, r->timer_nr, arg, 8);  /* no out field: `after` stays empty */
    r->timer_deadline = deadline;
    r->timer_armed = 1;
    r->timers++;
    r->work |= WORK_TIMER;
    return 1;
}

/* IDLE at `arg` (nr `nr`): its exit taken without Python (see 8. above); 0 when it must
 * go to Python. */
static int native_idle(void *uc, struct denali_route *r, uint32_t nr, uint32_t arg)
{
    if (!range_ok(r, arg, 24, PROT_R | PROT_W))
        return 0;
    r->hc_nr = nr;
    r->hc_arg = arg;
    r->idle_exit = 1;
    if (r->idle_answers) {  /* a yield: its out fields now, as if nothing were pending */
        uint64_t deadline;
        int64_t now = vm_clock(r);
        memcpy(&deadline, r->mem + arg, 8);
        if (deadline != 0 && (int64_t)deadline <= now) {
            uint32_t none = 0;
            memcpy(r->mem + arg + 8, &now, 8);
            memcpy(r->mem + arg + 16, &none, 4);
            r->idle_exit = 2;
        }
    }
    r->idles++;
    r->emu_stop(uc);
    return 1;
}

/* CONSOLE_WRITE at `arg` answered without Python (see 11. above); 0 when it must go to
 * Python (which empties the buffer first, so the bytes keep their order). */
static int native_console(void *uc, struct denali_route *r, uint32_t arg)
{
    uint32_t w[2], ok = 0;
    if (!r->con_buf) {
        r->con_want = 1;
        r->work |= WORK_CONSOLE;
        return 0;
    }
    if (!range_ok(r, arg, 8, PROT_R))
        return 0;
    memcpy(w, r->mem + arg, 8);
    if (w[1] > r->con_cap - r->con_len || !range_ok(r, w[0], w[1], PROT_R))
        return 0;
    if (r->reg_write(uc, r->eax_reg, &ok) != 0)
        return 0;
    memcpy(r->con_buf + r->con_len, r->mem + w[0], w[1]);
    r->con_len += w[1];
    r->consoles++;
    r->work |= WORK_CONSOLE;
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
    if (intno == r->vector) {  /* EAX and EBX read once, for the paths here and for Python */
        uint32_t nr = 0, arg = 0;
        r->reg_read(uc, r->eax_reg, &nr);
        r->reg_read(uc, r->ebx_reg, &arg);
        if (!r->faulted) {
            if (nr == r->clock_nr && nr && native_clock(uc, r, arg))
                return;
            if (nr == r->send_nr && nr && native_send(uc, r, arg))
                return;
            if (nr == r->timer_nr && nr && native_timer(uc, r, arg))
                return;
            if (nr == r->idle_nr && nr && native_idle(uc, r, nr, arg))
                return;
            if (nr == r->console_nr && nr && native_console(uc, r, arg))
                return;
        }
        r->hc_nr = nr;
        r->hc_arg = arg;
    }
    r->hc_answer = 0;
    r->fallbacks++;
    r->fallback(uc, intno, r->fallback_data);
    if (r->hc_answer) {  /* answered in Python: its result, written here (one call less there) */
        r->hc_answer = 0;
        r->reg_write(uc, r->eax_reg, &r->hc_result);
    }
}

/* ---- 9. the watchdog ---- */
#define MAX_LANES 256

struct denali_lane {
    struct denali_stop_cell *cell;  /* the engine whose slice runs here; NULL: none */
    int64_t deadline;               /* CLOCK_MONOTONIC, ns */
    uint64_t starts;                /* slices started here */
    uint64_t stops;                 /* stop flags set here by the watchdog */
};

struct denali_watchdog {
    pthread_mutex_t lock;
    pthread_cond_t kick;
    pthread_t thread;
    int started, closed, dormant, realtime;  /* realtime: 1 got SCHED_FIFO, -1 refused */
    int64_t poll_ns, retry_ns, dormant_after_ns;
    uint32_t lanes_used;
    struct denali_lane lanes[MAX_LANES];
};

static void sleep_until(int64_t t)
{
    struct timespec ts = {(time_t)(t / 1000000000), (long)(t % 1000000000)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

static void *watchdog_main(void *p)
{
    struct denali_watchdog *w = p;
    struct sched_param sp = {.sched_priority = 1};
    int rt = pthread_setschedparam(pthread_self(), SCHED_FIFO, &sp) == 0 ? 1 : -1;
    uint64_t last_starts = ~(uint64_t)0;
    pthread_mutex_lock(&w->lock);
    w->realtime = rt;
    int64_t last_activity = mono_ns();
    while (!w->closed) {
        int64_t now = mono_ns(), wake = 0;
        uint64_t starts = 0;
        for (uint32_t i = 0; i < w->lanes_used; i++) {
            struct denali_lane *l = &w->lanes[i];
            starts += l->starts;
            if (!l->cell)
                continue;
            int64_t due = l->deadline;
            if (now >= l->deadline) {
                l->cell->flag = 1;
                l->stops++;
                due = now + w->retry_ns;
            }
            if (!wake || due < wake)
                wake = due;
        }
        if (starts != last_starts) {
            last_starts = starts;
            last_activity = now;
        }
        if (wake) {
            pthread_mutex_unlock(&w->lock);
            sleep_until(wake);
            pthread_mutex_lock(&w->lock);
        } else if (now - last_activity > w->dormant_after_ns) {
            w->dormant = 1;
            for (;;) {
                uint64_t n = 0;
                for (uint32_t i = 0; i < w->lanes_used; i++)
                    n += w->lanes[i].starts;
                if (w->closed || n != last_starts)
                    break;
                pthread_cond_wait(&w->kick, &w->lock);
            }
            w->dormant = 0;
            last_activity = mono_ns();
        } else {
            pthread_mutex_unlock(&w->lock);
            sleep_until(now + w->poll_ns);
            pthread_mutex_lock(&w->lock);
        }
    }
    pthread_mutex_unlock(&w->lock);
    return NULL;
}

/* A watchdog without lanes, not started; NULL if out of memory. */
struct denali_watchdog *denali_watchdog_new(int64_t poll_ns, int64_t retry_ns, int64_t dormant_ns)
{
    struct denali_watchdog *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->kick, NULL);
    w->poll_ns = poll_ns;
    w->retry_ns = retry_ns;
    w->dormant_after_ns = dormant_ns;
    return w;
}

/* A new lane's index, or -1 when it has MAX_LANES. */
int denali_watchdog_add_lane(struct denali_watchdog *w)
{
    int i = -1;
    pthread_mutex_lock(&w->lock);
    if (w->lanes_used < MAX_LANES)
        i = (int)w->lanes_used++;
    pthread_mutex_unlock(&w->lock);
    return i;
}

/* Start its thread: 0, or the error of pthread_create. */
int denali_watchdog_start(struct denali_watchdog *w)
{
    if (w->started)
        return 0;
    int err = pthread_create(&w->thread, NULL, watchdog_main, w);
    if (!err)
        w->started = 1;
    return err;
}

/* Stop its thread, wait for it, free it. No slice may run on its lanes. */
void denali_watchdog_free(struct denali_watchdog *w)
{
    pthread_mutex_lock(&w->lock);
    w->closed = 1;
    pthread_cond_signal(&w->kick);
    pthread_mutex_unlock(&w->lock);
    if (w->started)
        pthread_join(w->thread, NULL);
    pthread_cond_destroy(&w->kick);
    pthread_mutex_destroy(&w->lock);
    free(w);
}

/* A lane's counters, and whether the thread got real-time priority (1), was refused it
 * (-1) or has not tried yet (0). */
void denali_watchdog_read(struct denali_watchdog *w, uint32_t lane, uint64_t *starts, uint64_t *stops, int *realtime)
{
    pthread_mutex_lock(&w->lock);
    *starts = lane < w->lanes_used ? w->lanes[lane].starts : 0;
    *stops = lane < w->lanes_used ? w->lanes[lane].stops : 0;
    *realtime = w->realtime;
    pthread_mutex_unlock(&w->lock);
}

/* One slice in one call from Python (6. above): the result of a hypercall completed
 * between slices goes to EAX, the stop request and the fault hold are cleared, the
 * watchdog learns that lane `lane` runs until `deadline` (CLOCK_MONOTONIC ns), the
 * engine runs from `begin` (at most `count` instructions; 0: no bound), the lane is
 * free again, and EIP is left in the route. Returns uc_emu_start's error code. */
int denali_run(void *uc, uint64_t begin, uint64_t count, struct denali_route *r, struct denali_stop_cell *cell,
               struct denali_watchdog *w, uint32_t lane, int64_t deadline)
{
    struct denali_lane *l = &w->lanes[lane < w->lanes_used ? lane : 0];
    cell->flag = 0;
    r->faulted = 0;
    if (r->eax_pending) {
        r->eax_pending = 0;
        r->reg_write(uc, r->eax_reg, &r->eax_value);
    }
    pthread_mutex_lock(&w->lock);
    l->cell = cell;
    l->deadline = deadline;
    l->starts++;
    int wake = w->dormant;
    if (wake)
        pthread_cond_signal(&w->kick);
    pthread_mutex_unlock(&w->lock);
    int err = r->emu_start(uc, begin, 0, 0, (size_t)count);
    pthread_mutex_lock(&w->lock);
    l->cell = NULL;
    pthread_mutex_unlock(&w->lock);
    r->reg_read(uc, r->eip_reg, &r->eip);
    return err;
}

/* ---- 12. the sleepers ---- */
#define SLEEP_OFF 0     /* not on the heap: the owner's */
#define SLEEP_HEAP 1    /* on the heap, waiting */
#define SLEEP_RUN 2     /* its slice runs (denali_sleepers_fire) */
#define BACK_DUE 1
#define BACK_SLICE 2
#define BACK_WAIT 3

struct denali_sleeper {
    void *uc;
    struct denali_route *route;
    struct denali_stop_cell *cell;
    uint32_t id;                /* the owner's name for it */
    uint32_t state;             /* SLEEP_* */
    uint32_t heap_pos;
    uint32_t unpark;            /* asked to leave while its slice ran */
    uint32_t idle_arg;          /* the IDLE structure it waits in */
    uint32_t why;               /* BACK_*: why it was handed back */
    uint64_t idle_deadline;     /* on the VM's clock (ns; 0: none) */
    uint64_t timer_deadline;    /* the armed timer, on the VM's clock (ns; 0: none) */
    int64_t wake_at;            /* CLOCK_MONOTONIC ns: the earlier of the two */
    uint32_t vregs;             /* the register page's address in guest memory */
    uint32_t irq_timer;         /* the TIMER bit */
    uint32_t time_at;           /* offsets in the page: time_ns (u64, then cpu_khz, pending */
    uint32_t tail_at;           /* as u32s), and the kernel fields after irq_enable */
    uint32_t cpu_khz;
    int32_t err;                /* uc_emu_start's code for the last slice */
    uint8_t page[64];           /* the register page's kernel fields, as the owner wrote them */
    uint64_t wakes, irqs, slices, cpu_ns, idles;  /* since the owner last took them */
};

struct denali_sleepers {
    struct denali_sleeper **heap;
    uint32_t len, cap;
    struct denali_sleeper **back;  /* handed back by the last fire */
    uint32_t nback;
};

struct denali_sleepers *denali_sleepers_new(void)
{
    return calloc(1, sizeof(struct denali_sleepers));
}

void denali_sleepers_free(struct denali_sleepers *S)
{
    for (uint32_t i = 0; i < S->len; i++)
        S->heap[i]->state = SLEEP_OFF;
    free(S->heap);
    free(S->back);
    free(S);
}

static void heap_set(struct denali_sleepers *S, uint32_t i, struct denali_sleeper *s)
{
    S->heap[i] = s;
    s->heap_pos = i;
}

static void sift_up(struct denali_sleepers *S, uint32_t i)
{
    struct denali_sleeper *s = S->heap[i];
    while (i > 0) {
        uint32_t p = (i - 1) / 2;
        if (S->heap[p]->wake_at <= s->wake_at)
            break;
        heap_set(S, i, S->heap[p]);
        i = p;
    }
    heap_set(S, i, s);
}

static void sift_down(struct denali_sleepers *S, uint32_t i)
{
    struct denali_sleeper *s = S->heap[i];
    for (;;) {
        uint32_t c = 2 * i + 1;
        if (c >= S->len)
            break;
        if (c + 1 < S->len && S->heap[c + 1]->wake_at < S->heap[c]->wake_at)
            c++;
        if (S->heap[c]->wake_at >= s->wake_at)
            break;
        heap_set(S, i, S->heap[c]);
        i = c;
    }
    heap_set(S, i, s);
}

static void heap_remove(struct denali_sleepers *S, struct denali_sleeper *s)
{
    uint32_t i = s->heap_pos;
    struct denali_sleeper *last = S->heap[--S->len];
    if (i < S->len) {
        heap_set(S, i, last);
        sift_down(S, i);
        sift_up(S, last->heap_pos);
    }
    s->state = SLEEP_OFF;
}

/* When `s` is due on CLOCK_MONOTONIC (a deadline past what it can say: never, INT64_MAX);
 * 0 when it has no deadline. */
static int64_t due_at(const struct denali_sleeper *s)
{
    uint64_t a = s->timer_deadline, b = s->idle_deadline, d = a && (!b || a < b) ? a : b;
    int64_t zero = s->route->clock_zero;
    if (!d)
        return 0;
    if (d > (uint64_t)INT64_MAX || (zero > 0 && (int64_t)d > INT64_MAX - zero))
        return INT64_MAX;
    return (int64_t)d + zero > 0 ? (int64_t)d + zero : 1;
}

static void heap_push(struct denali_sleepers *S, struct denali_sleeper *s)
{
    s->wake_at = due_at(s);
    s->state = SLEEP_HEAP;
    S->heap[S->len++] = s;
    sift_up(S, S->len - 1);
}

/* Put `s` (off the heap, its fields filled) on the heap: 0; -1 when it has no deadline
 * or no memory could be had (it stays the owner's). */
int denali_sleep(struct denali_sleepers *S, struct denali_sleeper *s)
{
    if (s->state != SLEEP_OFF || !due_at(s))
        return -1;
    if (S->len == S->cap) {
        uint32_t cap = S->cap ? 2 * S->cap : 64;
        struct denali_sleeper **h = realloc(S->heap, cap * sizeof *h);
        if (!h)
            return -1;
        S->heap = h;
        struct denali_sleeper **b = realloc(S->back, cap * sizeof *b);
        if (!b)
            return -1;
        S->back = b;
        S->cap = cap;
    }
    s->unpark = 0;
    s->why = 0;
    heap_push(S, s);
    return 0;
}

/* Take `s` off the heap: 0; 1 when its slice runs (it is handed back when it ends). */
int denali_unpark(struct denali_sleepers *S, struct denali_sleeper *s)
{
    if (s->state == SLEEP_RUN) {
        s->unpark = 1;
        return 1;
    }
    if (s->state == SLEEP_HEAP)
        heap_remove(S, s);
    return 0;
}

/* When the earliest sleeper is due (CLOCK_MONOTONIC ns); 0 when none sleeps. */
int64_t denali_sleepers_next(const struct denali_sleepers *S)
{
    return S->len ? S->heap[0]->wake_at : 0;
}

static void hand_back(struct denali_sleepers *S, struct denali_sleeper *s, uint32_t why)
{
    s->state = SLEEP_OFF;
    s->why = why;
    S->back[S->nback++] = s;
}

/* Wake `s` (off the heap, due) and run one slice on `lane`; back on the heap or handed back. */
static void wake_one(struct denali_sleepers *S, struct denali_sleeper *s, struct denali_watchdog *w,
                     uint32_t lane, int64_t slice_ns)
{
    struct denali_route *r = s->route;
    uint8_t *page = r->mem + s->vregs;
    if (!range_ok(r, s->idle_arg, 24, PROT_R | PROT_W) || (uint64_t)s->vregs + 64 > r->mem_size) {
        hand_back(S, s, BACK_DUE);
        return;
    }
    int64_t now = vm_clock(r);
    uint32_t mask = 0, none = 0;
    if (s->timer_deadline && (uint64_t)now >= s->timer_deadline) {
        mask = s->irq_timer;
        s->timer_deadline = 0;
        s->irqs++;
    }
    memcpy(r->mem + s->idle_arg + 8, &now, 8);  /* IDLE returns */
    memcpy(r->mem + s->idle_arg + 16, &mask, 4);
    r->eax_value = 0;
    r->eax_pending = 1;
    memcpy(page, s->page, s->time_at);  /* the register page, as _write_vregs leaves it */
    memcpy(page + s->tail_at, s->page + s->tail_at, 64 - s->tail_at);
    now = vm_clock(r);
    memcpy(page + s->time_at, &now, 8);
    memcpy(page + s->time_at + 8, &s->cpu_khz, 4);
    memcpy(page + s->time_at + 12, &none, 4);
    s->state = SLEEP_RUN;
    s->wakes++;
    uint32_t calls = r->fallbacks;
    int64_t began = mono_ns();
    s->err = denali_run(s->uc, r->eip, 0, r, s->cell, w, lane, began + slice_ns);
    s->cpu_ns += (uint64_t)(mono_ns() - began);
    s->slices++;
    if (s->unpark || s->err || r->faulted || r->idle_exit != 1 || r->fallbacks != calls ||
        (r->work & ~(uint32_t)WORK_TIMER)) {
        hand_back(S, s, BACK_SLICE);
        return;
    }
    uint64_t deadline;
    memcpy(&deadline, r->mem + r->hc_arg, 8);
    now = vm_clock(r);
    if (deadline != 0 && deadline <= (uint64_t)now) {  /* a yield: the owner completes it */
        hand_back(S, s, BACK_SLICE);
        return;
    }
    if (r->timer_armed) {  /* the timer this slice armed replaces the last */
        r->timer_armed = 0;
        s->timer_deadline = r->timer_deadline;
    }
    r->work = 0;
    r->idle_exit = 0;
    s->idle_arg = r->hc_arg;
    s->idle_deadline = deadline;
    s->idles++;
    if (!due_at(s)) {
        hand_back(S, s, BACK_WAIT);
        return;
    }
    heap_push(S, s);
}

/* The sleepers due now: with `run`, each woken and run as above on `lane`, until
 * CLOCK_MONOTONIC reads `until` (0: no bound; what is due then stays on the heap);
 * without, all handed back. Returns how many were handed back (denali_sleepers_back). */
int denali_sleepers_fire(struct denali_sleepers *S, struct denali_watchdog *w, uint32_t lane, int64_t slice_ns,
                         int64_t until, int run)
{
    S->nback = 0;
    while (S->len) {
        struct denali_sleeper *s = S->heap[0];
        int64_t now = mono_ns();
        if (s->wake_at > now || (run && until && now >= until))
            break;
        heap_remove(S, s);
        if (run)
            wake_one(S, s, w, lane, slice_ns);
        else
            hand_back(S, s, BACK_DUE);
    }
    return (int)S->nback;
}

/* The i-th sleeper the last fire handed back (its id). */
uint32_t denali_sleepers_back(const struct denali_sleepers *S, uint32_t i)
{
    return i < S->nback ? S->back[i]->id : 0;
}
