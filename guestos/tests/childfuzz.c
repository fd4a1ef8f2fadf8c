/* test-childfuzz: a fuzzing monitor over a hostile child (tests/nesting/test_child_fuzz.py).
 *
 * It runs a sibling child (test-idle from the disk "sib", asleep for an hour) and then,
 * for rounds=R rounds, a hostile child (test-hcfuzz from the disk "child", calls=N
 * random hypercalls, with img=child so it makes real grandchildren, and ids= set to this
 * VM's id, the sibling's VM id and handle, and ids never issued). Each round interposes
 * on a random set of the child's hypercalls and answers every event at random: PASS,
 * ANSWER with a random result (sometimes writing random bytes over the call's structure
 * first), rarely KILL; before each answer it also sends hostile replies whose result the
 * contract fixes (a stale or foreign seq, another handle, an action that does not fit,
 * a length beyond CHILD_MEMORY_MAX, a buffer outside this VM, a child address outside the
 * child) and checks each one. It also reads and writes the hostile child's memory at
 * hostile addresses, and stops and resumes the sibling.
 *
 * A 64 KiB canary in this VM's memory (printed as "canary=ADDR len=LEN") must be intact
 * at the end. Twice it waits for the host (Irq.HOST) so the host can check the
 * sibling's and the canary's bytes: after "childfuzz: ready" (before any hostile child)
 * and after "childfuzz: done" (after the last). Then it destroys the sibling and prints
 * "childfuzz: ... SUCCESS" (exit 0) or "... FAIL" (exit 1).
 * seed=S (1), rounds=R (3), calls=N (4000), kill=K (one answer in K is a KILL: 3000). */
#include <denali/child.h>
#include <ilwaco.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CANARY 65536u

static uint32_t rng;
static unsigned char canary[CANARY];
static unsigned checked, mismatches;

static uint32_t rnd(void)
{
    uint32_t x = rng;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return rng = x;
}

static uint32_t below(uint32_t n) { return rnd() % n; }

static uint32_t num(const char *key, uint32_t dflt)
{
    char v[24];
    return cmdline_get(key, v, sizeof v) > 0 ? (uint32_t)strtoul(v, 0, 0) : dflt;
}

static void fill_canary(uint32_t seed, int check, int *intact)
{
    uint32_t x = seed * 2654435761u | 1;
    for (uint32_t i = 0; i < CANARY; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        if (!check)
            canary[i] = (unsigned char)x;
        else if (canary[i] != (unsigned char)x)
            *intact = 0;
    }
}

static void expect(const char *what, int got, int want)
{
    checked++;
    if (got != want && mismatches++ < 8)
        printf("childfuzz: MISMATCH %s: got %d, the contract says %d\n", what, got, want);
}

static int reply(uint32_t h, uint32_t seq, uint32_t action, uint32_t result, uint32_t buf, uint32_t len,
                 uint32_t addr)
{
    struct denali_hc_child_reply r = {0};
    r.handle = h;
    r.seq = seq;
    r.action = action;
    r.result = result;
    r.buf = buf;
    r.len = len;
    r.addr = addr;
    return denali_hc_child_reply(&r);
}

/* Replies the contract must refuse, for the waiting event ev of child h. */
static void hostile_replies(uint32_t h, uint32_t sib, const child_event_t *ev, uint32_t mem)
{
    static unsigned char junk[64];
    expect("reply to a seq that does not wait", reply(h, ev->seq + 1 + below(1000), DENALI_CHILD_PASS, 0, 0, 0, 0),
           DENALI_INVAL);
    expect("reply to the sibling", reply(sib, ev->seq, DENALI_CHILD_PASS, 0, 0, 0, 0), DENALI_INVAL);
    uint32_t other = 2 + below(DENALI_CHILD_MAX - 2); /* handles 0 and 1: the sibling and h */
    expect("reply to a handle never issued", reply(other, ev->seq, 0, 0, 0, 0, 0), DENALI_NODEV);
    expect("reply to a huge handle", reply(DENALI_CHILD_MAX + rnd() % 0xffff0000u, ev->seq, 0, 0, 0, 0, 0),
           DENALI_NODEV);
    expect("resume of a hypercall", reply(h, ev->seq, DENALI_CHILD_RESUME, 0, 0, 0, 0), DENALI_INVAL);
    expect("unknown action", reply(h, ev->seq, 4 + below(1000), 0, 0, 0, 0), DENALI_INVAL);
    expect("length beyond CHILD_MEMORY_MAX",
           reply(h, ev->seq, DENALI_CHILD_ANSWER, 0, (uint32_t)junk, DENALI_CHILD_MEMORY_MAX + 1 + below(64), ev->arg),
           DENALI_INVAL);
    static const uint32_t bad_bufs[] = {0, 8, 0x3000u, 0xc0000000u, 0xfffffff0u};
    expect("a buffer outside this VM",
           reply(h, ev->seq, DENALI_CHILD_ANSWER, 0, bad_bufs[below(5)], 16 + below(48), ev->arg), DENALI_FAULT);
    uint32_t bad_addrs[] = {0, DENALI_ADDR_KERNEL_PAGE, 0xc0000000u, 0xfffffff0u, mem - 8, mem + below(1u << 20)};
    expect("a child address outside the child",
           reply(h, ev->seq, DENALI_CHILD_ANSWER, 0, (uint32_t)junk, 16 + below(48), bad_addrs[below(6)]),
           DENALI_FAULT);
}

/* Hostile memory calls on child h (mem bytes of memory). */
static void hostile_memory(uint32_t h, uint32_t mem)
{
    unsigned char buf[64];
    uint32_t bad[] = {0, 0xc0000000u, 0xfffffff0u, mem - 8, mem + below(1u << 20), DENALI_ADDR_KERNEL_PAGE};
    uint32_t a = bad[below(6)];
    if (a != DENALI_ADDR_KERNEL_PAGE) /* the child may read its kernel page, not write it */
        expect("read outside the child", child_read(h, a, buf, 16 + below(48)), DENALI_FAULT);
    expect("write outside the child", child_write(h, a, buf, 16 + below(48)), DENALI_FAULT);
    expect("read into a buffer outside this VM", child_read(h, DENALI_ADDR_VREGS, (void *)0xc0000000u, 16),
           DENALI_FAULT);
    expect("read of a length beyond CHILD_MEMORY_MAX",
           child_read(h, DENALI_ADDR_VREGS, buf, DENALI_CHILD_MEMORY_MAX + 1 + below(1000)), DENALI_INVAL);
    uint32_t vr[2];
    int r = child_read(h, DENALI_ADDR_VREGS, vr, sizeof vr); /* the child waits: it reads */
    expect("read of the child's registers", r == DENALI_OK && vr[0] != 0x494C4E44u ? -1 : r, DENALI_OK);
}

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    uint32_t seed = num("seed", 1), rounds = num("rounds", 3), calls = num("calls", 4000);
    uint32_t kill_one_in = num("kill", 3000);
    rng = seed ? seed : 1;
    fill_canary(seed, 0, 0);
    void *image, *sib_image;
    uint32_t len, sib_len, sib, sib_vm, hmem = 8u << 20;
    int r = child_load_disk("child", &image, &len);
    if (r != DENALI_OK || (r = child_load_disk("sib", &sib_image, &sib_len)) != DENALI_OK) {
        printf("childfuzz: FAIL: no child images (code %d)\n", r);
        return 1;
    }
    struct denali_hc_child_create c = {0};
    static const char sib_cmd[] = "ms=3600000";
    c.image = (uint32_t)sib_image;
    c.image_len = sib_len;
    c.mem_size = 1u << 20;
    c.cmdline = (uint32_t)sib_cmd;
    c.cmdline_len = sizeof sib_cmd - 1;
    if ((r = denali_hc_child_create(&c)) != DENALI_OK) {
        printf("childfuzz: FAIL: sibling create (code %d)\n", r);
        return 1;
    }
    sib = c.handle;
    sib_vm = c.vm_id;
    child_start(sib);
    printf("childfuzz: sibling vm=%u canary=0x%x len=%u ready\n", (unsigned)sib_vm, (unsigned)(uint32_t)canary,
           CANARY);
    irq_wait(DENALI_IRQ_HOST, 0);

    unsigned exited_ok = 0, killed = 0, other_end = 0, events = 0, answers = 0, passes = 0, writes = 0;
    for (uint32_t round = 0; round < rounds; round++) {
        uint32_t mask = 0;
        for (uint32_t n = 2; n < 32; n++)
            if (!below(3))
                mask |= 1u << n;
        char cmd[200];
        snprintf(cmd, sizeof cmd, "seed=%u calls=%u monitored=0x%x img=child ids=%u,%u,%u,%u,%u", (unsigned)(seed + round),
                 (unsigned)calls, (unsigned)mask, (unsigned)DENALI_VREGS->vm_id, (unsigned)sib_vm, (unsigned)sib,
                 (unsigned)(sib_vm + 1000), 0u);
        uint32_t h;
        /* flags: a NIC this VM does not have to pass down, a bit no ABI defines */
        expect("a NIC from a parent without one",
               child_create(image, len, hmem, 6u << 20, cmd, 1u, DENALI_CHILD_F_NIC | below(2), &h), DENALI_NODEV);
        expect("unknown create flags", child_create(image, len, hmem, 6u << 20, cmd, 1u, 4u << below(29), &h),
               DENALI_INVAL);
        r = child_create(image, len, hmem, 6u << 20, cmd, 1u /* the disk "child" */, below(2), &h);
        if (r != DENALI_OK) {
            printf("childfuzz: FAIL: child_create (code %d)\n", r);
            return 1;
        }
        expect("interpose on a handle never issued", child_interpose(h + 1 + below(3), mask, 0), DENALI_NODEV);
        expect("interpose with unknown flags", child_interpose(h, mask, 2 + below(1000)), DENALI_INVAL);
        /* until the child has read its image (it says so on the console), its disk calls pass */
        uint32_t loading = 1u << DENALI_HC_DISK_INFO | 1u << DENALI_HC_DISK_READ;
        child_interpose(h, (mask & ~loading) | 1u << DENALI_HC_CONSOLE_WRITE, 0);
        int loaded = 0;
        child_start(h);
        expect("start twice", child_start(h), DENALI_INVAL);
        int was_killed = 0;
        for (;;) {
            child_event_t ev;
            child_next_event(&ev);
            events++;
            if (ev.handle == sib) {
                printf("childfuzz: FAIL: the sibling ended (kind %u nr %u)\n", (unsigned)ev.kind, (unsigned)ev.nr);
                return 1;
            }
            if (ev.handle != h) {
                printf("childfuzz: FAIL: event of handle %u\n", (unsigned)ev.handle);
                return 1;
            }
            if (ev.kind == DENALI_CHILD_EV_EXIT) {
                if (was_killed && ev.nr == DENALI_CHILD_END_KILLED)
                    killed++;
                else if (ev.nr == DENALI_CHILD_END_EXITED && ev.status == 0)
                    exited_ok++;
                else {
                    other_end++;
                    printf("childfuzz: round %u: child ended %u status %u eip=0x%x address=0x%x\n", (unsigned)round,
                           (unsigned)ev.nr, (unsigned)ev.status, (unsigned)ev.eip, (unsigned)ev.address);
                }
                break;
            }
            if (ev.kind != DENALI_CHILD_EV_HYPERCALL) {
                printf("childfuzz: FAIL: event kind %u\n", (unsigned)ev.kind);
                return 1;
            }
            if (!loaded && ev.nr == DENALI_HC_CONSOLE_WRITE) { /* "image loaded" */
                expect("interpose while a call waits", child_interpose(h, mask, 0), DENALI_OK);
                loaded = 1;
                expect("pass", reply(h, ev.seq, DENALI_CHILD_PASS, 0, 0, 0, 0), DENALI_OK);
                continue;
            }
            if (!below(8)) {
                hostile_replies(h, sib, &ev, hmem);
                hostile_memory(h, hmem);
                expect("stop the sibling", child_stop(sib), DENALI_OK);
                expect("resume the sibling", child_resume(sib), DENALI_OK);
            }
            uint32_t pick = below(kill_one_in);
            if (pick == 0) {
                expect("kill", reply(h, ev.seq, DENALI_CHILD_KILL, 0, 0, 0, 0), DENALI_OK);
                was_killed = 1;
                continue;
            }
            if (pick % 2) {
                expect("pass", reply(h, ev.seq, DENALI_CHILD_PASS, 0, 0, 0, 0), DENALI_OK);
                passes++;
                continue;
            }
            uint32_t result = below(4) ? below(8) : rnd();
            if (ev.arg >> 12 != DENALI_ADDR_VREGS >> 12 && ev.arg < hmem - 4096 && !below(3)) { /* fill its OUT fields at random */
                unsigned char out[64];
                for (unsigned k = 0; k < sizeof out; k++)
                    out[k] = (unsigned char)rnd();
                uint32_t n = 1 + below(sizeof out);
                r = reply(h, ev.seq, DENALI_CHILD_ANSWER, result, (uint32_t)out, n, ev.arg);
                if (r == DENALI_OK) {
                    writes++;
                    answers++;
                    continue;
                }
                /* the child cannot write its own structure there: nothing was written */
                expect("a write-back where the child cannot write", r, DENALI_FAULT);
            }
            expect("answer", reply(h, ev.seq, DENALI_CHILD_ANSWER, result, 0, 0, 0), DENALI_OK);
            answers++;
        }
        expect("the ended child's handle is free", child_stop(h), DENALI_NODEV);
    }
    int intact = 1;
    fill_canary(seed, 1, &intact);
    printf("childfuzz: done rounds=%u exited_ok=%u killed=%u other_end=%u events=%u passes=%u answers=%u "
           "writes=%u checked=%u mismatches=%u canary %s\n",
           (unsigned)rounds, exited_ok, killed, other_end, events, passes, answers, writes, checked, mismatches,
           intact ? "intact" : "CHANGED");
    irq_wait(DENALI_IRQ_HOST, 0);
    child_destroy(sib);
    for (;;) {
        child_event_t ev;
        child_next_event(&ev);
        if (ev.handle == sib && ev.kind == DENALI_CHILD_EV_EXIT)
            break;
    }
    int ok = intact && mismatches == 0 && other_end == 0 && exited_ok + killed == rounds;
    printf("childfuzz: seed=%u %s\n", (unsigned)seed, ok ? "SUCCESS" : "FAIL");
    return ok ? 0 : 1;
}
