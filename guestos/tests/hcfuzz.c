/* test-hcfuzz: seed=S calls=N makes N random hypercalls, numbers, argument pointers and
 * structure contents aimed at edges (page boundaries, the vregs and kernel pages,
 * unmapped pages, the end of memory, kernel space, lengths that wrap), and checks that
 * every one returns a known result code, that the calls whose result the contract fixes
 * and this guest can predict (unknown numbers, structures it cannot access, CLOCK,
 * TIMER_SET, IDLE, CONSOLE_WRITE) return exactly that, and that its code and read-only
 * data never changed. Prints "hcfuzz: ... SUCCESS" and exits 0; exits 1 on a failure.
 *
 * The writable memory the kernel may legitimately write into is a 2 MiB target area on
 * the heap (random pointers are confined to it, to pages the guest cannot write, or to
 * addresses outside its memory), so the fuzzer's own stack and globals stay intact.
 * IDLE always gets a deadline in the past (a random one would sleep for years); a
 * handler the kernel accepts is removed at once; TERMINATE only gets pointers it must
 * refuse. The personality calls are tamed so that the fuzzer survives what they accept
 * (tame()): SYSCALL_ENTRY's code range always covers all of memory (an accepted route
 * then routes nothing, and is removed at once), and MEM_PROTECT changes only whole pages
 * of the target area, leaving them readable and writable.
 *
 * As a hostile child VM (tests/nesting/test_child_fuzz.py): monitored=MASK names the
 * hypercalls (bit n: number n) its parent interposes on and may answer with anything,
 * so their results are counted apart ("answered") and not judged; ids=A,B,... are
 * numbers to try as child handles (its parent's and siblings' VM ids and handles, ids
 * never issued); img=DISK is a disk holding a valid image, which a quarter of the
 * CHILD_CREATE calls use (with sizes and quotas that often exceed its grant), so that
 * grandchildren are really made, started, stopped, read, interposed on and answered. */
#include <denali/child.h>
#include <ilwaco.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TARGET_SIZE (2u << 20)
#define PAGE 4096u

static uint32_t rng_state;
static uint32_t ids[8], nids;             /* ids=: handles to try */
static void *valid_image;                 /* img=: a real child image */
static uint32_t valid_len;
static const char child_cmd[] = "seed=5 calls=300";
static uint32_t mem_size, heap_end, target;
static const uint32_t edge_lengths[] = {
    0, 1, 2, 3, 4, 7, 8, 59, 60, 61, 1513, 1514, 1515, 4095, 4096, 4097, 8192, 65535, 65536, 65537,
    0x7fffffffu, 0x80000000u, 0x80000001u, 0xfffff000u, 0xfffffffcu, 0xffffffffu, 255, 256, 257, 31, 32, 33, 64, 65,
};

static uint32_t rnd(void)
{
    uint32_t x = rng_state; /* xorshift32 */
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return rng_state = x;
}

static uint32_t below(uint32_t n) { return rnd() % n; }

static uint32_t page_of(const void *p) { return (uint32_t)p & ~(PAGE - 1); }

/* A guest address: in the target area, or somewhere the guest cannot write, or outside
 * its memory. With 'any' 0, only one no 8-byte structure can be read at (for TERMINATE). */
static uint32_t pointer(int any)
{
    int writable_ok = any;
    for (;;) {
        uint32_t kind = below(14);
        if (!any && kind < 9)
            continue;
        switch (kind) {
        case 0: case 1: case 2: case 3:
            if (writable_ok)
                return target + below(TARGET_SIZE);
            break;
        case 4: /* page boundaries inside the target */
            if (writable_ok)
                return target + below(TARGET_SIZE / PAGE) * PAGE + below(17) - 8;
            break;
        case 5: /* the vregs page and the command line in it */
            if (writable_ok)
                return DENALI_ADDR_VREGS + below(PAGE + 16) - 8;
            break;
        case 6: return DENALI_ADDR_KERNEL_PAGE + below(PAGE + 16) - 8;
        case 7: return page_of((const void *)main) + below(PAGE); /* code */
        case 8: return page_of(edge_lengths) + below(PAGE);      /* read-only data */
        case 9: return below(2) ? below(PAGE) : 0x3000u + below(0x10000u - 0x3000u); /* unmapped */
        case 10: return heap_end + below(PAGE - 8);                /* the stack guard page */
        case 11: return below(2) ? mem_size - 1 - below(3) : mem_size + below(1u << 20); /* the end */
        case 12: return below(2) ? 0xc0000000u + rnd() % 0x3fffffffu : 0xffffffffu - below(64);
        default: return 0;
        }
    }
}

static uint32_t length(void)
{
    return below(4) ? edge_lengths[below(sizeof edge_lengths / sizeof edge_lengths[0])] : below(2048);
}

static uint32_t word(void)
{
    switch (below(6)) {
    case 0: case 1: return pointer(1);
    case 2: case 3: return length();
    case 4: return 0;
    default: return rnd();
    }
}

/* Make half of the disk and network calls nearly valid, so that they get past the first
 * checks to the requests, completions and frames behind them. */
static void shape(uint32_t nr, uint32_t *w)
{
    uint32_t buf = target + below(TARGET_SIZE / PAGE - 300) * PAGE + (below(8) ? 0 : below(PAGE));
    switch (nr) {
    case DENALI_HC_DISK_READ:
    case DENALI_HC_DISK_WRITE:
        w[0] = below(3);                          /* handle: two disks, and one too many */
        w[1] = below(8) ? 1 + below(8) : length(); /* count */
        w[2] = below(8) ? below(70) : rnd();      /* block (u64) */
        w[3] = below(8) ? 0 : rnd();
        w[4] = below(8) ? buf : pointer(1);
        break;
    case DENALI_HC_DISK_FLUSH:
        w[0] = below(3);
        break;
    case DENALI_HC_DISK_INFO:
        w[0] = below(2) ? 0 : 0x6f72; /* "" (by index) or "ro" */
        w[8] = below(3);
        break;
    case DENALI_HC_NET_SEND: {
        uint32_t *iov = (uint32_t *)(buf & ~3u);
        w[0] = (uint32_t)iov;
        w[1] = below(8) ? 1 + below(4) : length();
        for (int k = 0; k < 8; k++) {
            uint32_t frame = buf + PAGE * (uint32_t)(1 + k);
            iov[2 * k] = below(8) ? frame : pointer(1);
            iov[2 * k + 1] = below(4) ? 60 + below(1455) : length();
            if (below(2)) /* our own source MAC, so that the switch forwards it */
                memcpy((void *)(frame + 6), (const void *)&DENALI_VREGS->mac[0], 6);
        }
        break;
    }
    case DENALI_HC_CHILD_CREATE: /* garbage images, edge sizes, hostile pointers */
        if (valid_image && !below(4)) { /* a real image, often beyond the grant */
            static const uint32_t sizes[] = {1u << 20, 4u << 20, 6u << 20, 64u << 20, 0xfffff000u};
            w[0] = (uint32_t)valid_image;
            w[1] = below(8) ? valid_len : length();
            w[2] = sizes[below(5)];
            w[3] = below(2) ? 0 : below(2) ? (1u << 20) : length();
            w[4] = (uint32_t)child_cmd;
            w[5] = below(4) ? sizeof child_cmd - 1 : length();
            w[6] = below(4);
            w[7] = below(2);
            break;
        }
        w[0] = below(4) ? buf : pointer(1);
        w[1] = below(2) ? 52 + below(8192) : length();
        w[2] = below(2) ? (1u << 20) : length();
        w[3] = below(2) ? 0 : length();
        w[4] = below(4) ? buf : pointer(1);
        w[5] = below(4) ? below(64) : length();
        w[6] = below(2) ? below(4) : rnd();
        w[7] = below(4) ? below(2) : rnd();
        break;
    case DENALI_HC_CHILD_CONTROL:
    case DENALI_HC_CHILD_INTERPOSE:
        w[0] = nids && !below(3) ? ids[below(nids)] : below(2) ? below(DENALI_CHILD_MAX + 1) : rnd();
        w[1] = below(2) ? below(6) : rnd();
        w[2] = rnd();
        w[3] = rnd();
        break;
    case DENALI_HC_CHILD_MEMORY:
    case DENALI_HC_CHILD_REPLY:
        w[0] = nids && !below(3) ? ids[below(nids)] : below(2) ? below(DENALI_CHILD_MAX + 1) : rnd();
        w[1] = below(2) ? below(4) : rnd();
        w[2] = below(2) ? below(4) : pointer(1);
        w[3] = below(2) ? buf : pointer(1);
        w[4] = length();
        w[5] = length();
        w[6] = pointer(1);
        break;
    case DENALI_HC_NET_RECV:
        w[0] = buf;
        w[1] = below(4) ? 1514 + below(600) : length();
        w[2] = below(4) ? 1 + below(16) : length();
        w[3] = below(4) ? buf + 40 * PAGE : pointer(1);
        break;
    default:
        break;
    }
}

/* What the kernel must allow at [addr, addr+len): 1 certainly, 0 certainly not, -1 when
 * this guest cannot tell (image pages other than the two it knows, an empty range). */
static uint32_t heap_start;

static int page_access(uint32_t page, int write)
{
    if (page == DENALI_ADDR_VREGS)
        return 1;
    if (page == DENALI_ADDR_KERNEL_PAGE)
        return !write;
    if (page < DENALI_ADDR_IMAGE_BASE || page >= mem_size || page == heap_end)
        return 0;
    if (page == page_of((const void *)main) || page == page_of(edge_lengths))
        return !write;
    if (page >= heap_start)
        return 1; /* the heap and the stack */
    return -1;
}

static int access(uint32_t addr, uint32_t len, int write)
{
    if (len == 0)
        return -1;
    if (addr + len < addr)
        return 0; /* wraps */
    if (write && addr < DENALI_ADDR_VREGS + sizeof(struct denali_vregs) && addr + len > DENALI_ADDR_VREGS)
        return -1; /* over the register block: refused unless only irq_enable (not modelled) */
    int known = 1;
    for (uint32_t page = page_of((const void *)addr); ; page += PAGE) {
        int a = page_access(page, write);
        if (a == 0)
            return 0;
        if (a < 0)
            known = 0;
        if (page >= addr + len - 1 - ((addr + len - 1) & (PAGE - 1)))
            break;
    }
    return known ? 1 : -1;
}

/* SYSCALL_ENTRY and MEM_PROTECT always get a structure we fill (in the target) whose
 * effect, if accepted, the fuzzer survives; the other fields stay random. */
static uint32_t tame(uint32_t nr, uint32_t arg, unsigned char *area)
{
    if (nr != DENALI_HC_SYSCALL_ENTRY && nr != DENALI_HC_MEM_PROTECT)
        return arg;
    arg = target + (below(TARGET_SIZE - 128) & ~3u);
    uint32_t *w = (uint32_t *)(area + (arg - target));
    for (int k = 0; k < 4; k++)
        w[k] = word();
    if (nr == DENALI_HC_SYSCALL_ENTRY) {
        w[2] = 0;
        w[3] = 0xffffffffu;
        return arg;
    }
    uint32_t first = page_of(area) + PAGE, end = page_of(area + TARGET_SIZE); /* whole pages */
    if (below(4)) {                      /* a valid range inside the target */
        uint32_t pages = (end - first) / PAGE;
        uint32_t n = 1 + below(16);
        w[0] = first + below(pages - n) * PAGE;
        w[1] = n * PAGE;
    }
    uint32_t lo = w[0], len = w[1];
    int inside = lo >= first && lo <= end && len <= end - lo;
    static const uint32_t refused[] = {DENALI_MEM_W, DENALI_MEM_R | DENALI_MEM_W | DENALI_MEM_X, 0x40u,
                                       DENALI_MEM_W | DENALI_MEM_X};
    if (inside)                           /* stays RW, or a protection the kernel refuses */
        w[2] = below(4) ? DENALI_MEM_R | DENALI_MEM_W | (below(2) ? DENALI_MEM_DISCARD : 0)
                        : refused[below(4)];
    else if (lo % PAGE == 0 && len % PAGE == 0 && len && lo >= 0x10000u && lo < mem_size)
        w[0] = lo + 1;                    /* would reach the fuzzer's own pages: misaligned */
    return arg;
}

struct shape_of_call { uint32_t size; int writes; };
static const struct shape_of_call calls_shape[DENALI_HC_LAST + 1] = {
    [DENALI_HC_TERMINATE] = {sizeof(struct denali_hc_terminate), 0},
    [DENALI_HC_IDLE] = {sizeof(struct denali_hc_idle), 1},
    [DENALI_HC_CONSOLE_WRITE] = {sizeof(struct denali_hc_console_write), 0},
    [DENALI_HC_CLOCK] = {sizeof(struct denali_hc_clock), 1},
    [DENALI_HC_SET_HANDLER] = {sizeof(struct denali_hc_set_handler), 0},
    [DENALI_HC_TIMER_SET] = {sizeof(struct denali_hc_timer_set), 0},
    [DENALI_HC_NET_INFO] = {sizeof(struct denali_hc_net_info), 1},
    [DENALI_HC_NET_SEND] = {sizeof(struct denali_hc_net_send), 1},
    [DENALI_HC_NET_RECV] = {sizeof(struct denali_hc_net_recv), 1},
    [DENALI_HC_DISK_INFO] = {sizeof(struct denali_hc_disk_info), 1},
    [DENALI_HC_DISK_READ] = {sizeof(struct denali_hc_disk_read), 1},
    [DENALI_HC_DISK_WRITE] = {sizeof(struct denali_hc_disk_write), 1},
    [DENALI_HC_DISK_FLUSH] = {sizeof(struct denali_hc_disk_flush), 1},
    [DENALI_HC_SYSCALL_ENTRY] = {sizeof(struct denali_hc_syscall_entry), 0},
    [DENALI_HC_CONSOLE_READ] = {sizeof(struct denali_hc_console_read), 1},
    [DENALI_HC_CONSOLE_WRITE_ERR] = {sizeof(struct denali_hc_console_write_err), 0},
    [DENALI_HC_MEM_PROTECT] = {sizeof(struct denali_hc_mem_protect), 0},
    [DENALI_HC_SET_TLS] = {sizeof(struct denali_hc_set_tls), 0},
    [DENALI_HC_RANDOM] = {sizeof(struct denali_hc_random), 0},
    [DENALI_HC_CHILD_CREATE] = {sizeof(struct denali_hc_child_create), 1},
    [DENALI_HC_CHILD_CONTROL] = {sizeof(struct denali_hc_child_control), 0},
    [DENALI_HC_CHILD_MEMORY] = {sizeof(struct denali_hc_child_memory), 0},
    [DENALI_HC_CHILD_INTERPOSE] = {sizeof(struct denali_hc_child_interpose), 0},
    [DENALI_HC_CHILD_EVENT] = {sizeof(struct denali_hc_child_event), 1},
    [DENALI_HC_CHILD_REPLY] = {sizeof(struct denali_hc_child_reply), 0},
};

/* The result the contract gives this call, or -1 when the guest cannot know it.
 * 'cons' is the CONSOLE_WRITE structure as read before the call (buf, len). */
static int expected(uint32_t nr, uint32_t arg, const uint32_t *cons)
{
    if (nr == 0 || nr > DENALI_HC_LAST)
        return DENALI_NOSYS;
    int a = access(arg, calls_shape[nr].size, calls_shape[nr].writes);
    if (a == 0)
        return DENALI_FAULT;
    if (a < 0)
        return -1;
    switch (nr) {
    case DENALI_HC_CLOCK: case DENALI_HC_TIMER_SET: case DENALI_HC_IDLE:
        return DENALI_OK;
    case DENALI_HC_CONSOLE_WRITE: {
        if (!cons)
            return -1;
        if (cons[1] > 65536)
            return DENALI_INVAL;
        if (cons[1] == 0)
            return DENALI_OK;
        int b = access(cons[0], cons[1], 0);
        return b < 0 ? -1 : b ? DENALI_OK : DENALI_FAULT;
    }
    default:
        return -1;
    }
}

static uint32_t checksum(uint32_t from, uint32_t to)
{
    uint32_t h = 2166136261u;
    for (const unsigned char *p = (const unsigned char *)from; p < (const unsigned char *)to; p++)
        h = (h ^ *p) * 16777619u;
    return h;
}

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    char v[24];
    uint32_t seed = cmdline_get("seed", v, sizeof v) >= 0 ? (uint32_t)strtoul(v, 0, 10) : 1;
    rng_state = seed ? seed : 1;
    uint32_t calls = cmdline_get("calls", v, sizeof v) >= 0 ? (uint32_t)strtoul(v, 0, 10) : 10000;
    uint32_t monitored = cmdline_get("monitored", v, sizeof v) > 0 ? (uint32_t)strtoul(v, 0, 0) : 0;
    if (cmdline_get("ids", v, sizeof v) > 0)
        for (char *p = v; *p && nids < sizeof ids / sizeof ids[0];) {
            ids[nids++] = (uint32_t)strtoul(p, &p, 0);
            if (*p == ',')
                p++;
            else
                break;
        }
    char img[32];
    if (cmdline_get("img", img, sizeof img) > 0 && child_load_disk(img, &valid_image, &valid_len) != DENALI_OK) {
        printf("hcfuzz: cannot read the image on disk %s\n", img);
        return 1;
    }
    if (valid_image)
        printf("hcfuzz: image loaded\n"); /* a monitor may start answering the disk calls now */
    mem_size = DENALI_VREGS->mem_size;
    heap_end = DENALI_VREGS->heap_end;
    heap_start = DENALI_VREGS->heap_start;
    unsigned char *area = malloc(TARGET_SIZE);
    if (!area) {
        printf("hcfuzz: no memory for the target area\n");
        return 1;
    }
    target = (uint32_t)area;
    uint32_t ro_from = 0x10000u, ro_to = page_of(edge_lengths) + PAGE;
    uint32_t ro_sum = checksum(ro_from, ro_to);
    uint32_t counts[9] = {0}; /* results 0..7, then unknown ones */
    uint32_t handlers = 0, routes = 0, checked = 0, mismatches = 0, answered = 0;

    for (uint32_t i = 0; i < calls; i++) {
        uint32_t nr;
        if (below(8))
            nr = 2 + below(DENALI_HC_LAST - 1);   /* every hypercall but TERMINATE */
        else if (below(4))
            nr = 1;                               /* TERMINATE, with pointers it must refuse */
        else
            nr = below(2) ? DENALI_HC_LAST + 1 + below(300) : rnd();
        uint32_t arg;
        if (nr == 1) {
            arg = pointer(0);
        } else if (below(5)) {
            arg = target + below(TARGET_SIZE - 128); /* a structure we fill */
            uint32_t *w = (uint32_t *)(area + (arg - target));
            if (arg & 3)
                w = 0; /* unaligned: fill it bytewise below */
            for (int k = 0; k < 32; k++) {
                uint32_t x = word();
                if (w)
                    w[k] = x;
                else
                    memcpy(area + (arg - target) + 4 * k, &x, 4);
            }
            if (nr == DENALI_HC_IDLE) {
                uint64_t past = below(2) ? 1 : DENALI_VREGS->time_ns;
                memcpy(area + (arg - target), &past, 8);
            }
            if (w && below(2))
                shape(nr, w);
        } else {
            arg = pointer(1);
            if (nr == DENALI_HC_IDLE && arg - (DENALI_ADDR_VREGS - 8) < PAGE + 16)
                arg = 0; /* the vregs page holds no deadline we chose */
            if (nr == DENALI_HC_IDLE && arg - target <= TARGET_SIZE - 8) {
                uint64_t past = 1; /* the target holds leftovers: a deadline years away */
                memcpy(area + (arg - target), &past, 8);
            }
        }
        arg = tame(nr, arg, area);
        uint32_t cons[2], after[2];
        int in_target = arg - target <= TARGET_SIZE - 8;
        if (in_target)
            memcpy(cons, area + (arg - target), 8);
        int r = denali_hypercall(nr, (void *)arg);
        if (nr < 32 && monitored >> nr & 1) { /* the parent may have answered anything */
            answered++;
            if (nr == DENALI_HC_SET_HANDLER && r == DENALI_OK) {
                struct denali_hc_set_handler none = {0, 0};
                denali_hc_set_handler(&none);
            }
            continue;
        }
        counts[(unsigned)r <= 7 ? (unsigned)r : 8]++;
        if (in_target)
            memcpy(after, area + (arg - target), 8);
        /* a disk completion may rewrite the structure meanwhile: judge only a stable one */
        int want = expected(nr, arg, in_target && !memcmp(cons, after, 8) ? cons : 0);
        if (want >= 0) {
            checked++;
            if (r != want && mismatches++ < 5)
                printf("\nhcfuzz: MISMATCH nr=%u arg=%08x got %d, the contract says %d\n", nr, arg, r, want);
        }
        if (nr == 1 && r == DENALI_OK) {
            printf("hcfuzz: FAIL: TERMINATE accepted %08x and returned\n", arg);
            return 1;
        }
        if (nr == DENALI_HC_SET_HANDLER && r == DENALI_OK) {
            struct denali_hc_set_handler none = {0, 0};
            handlers++;
            denali_hc_set_handler(&none);
        }
        if (nr == DENALI_HC_SYSCALL_ENTRY && r == DENALI_OK) {
            struct denali_hc_syscall_entry none = {0, 0, 0, 0};
            routes++;
            denali_hypercall(DENALI_HC_SYSCALL_ENTRY, &none);
        }
    }
    int ok = counts[8] == 0 && mismatches == 0 && checksum(ro_from, ro_to) == ro_sum;
    printf("\nhcfuzz: seed=%u calls=%u ok=%u again=%u inval=%u fault=%u nosys=%u nodev=%u full=%u "
           "io=%u unknown=%u handlers=%u routes=%u checked=%u mismatches=%u answered=%u code %s %s\n",
           seed, calls, counts[0], counts[1], counts[2], counts[3], counts[4], counts[5], counts[6],
           counts[7], counts[8], handlers, routes, checked, mismatches, answered,
           checksum(ro_from, ro_to) == ro_sum ? "intact" : "CHANGED", ok ? "SUCCESS" : "FAIL");
    return ok ? 0 : 1;
}
