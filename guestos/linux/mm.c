/* mm.c: the program's address space: brk, mmap, munmap, mprotect, mremap.
 *
 * The program owns [LX_PROGRAM_BASE, memory size). Its segments (read from its own
 * program headers through AT_PHDR) and its stack area are mapped at boot; the brk
 * heap grows up from the end of its segments, and mmap places mappings top-down below
 * the stack area. A sorted table of areas (`vmas`) mirrors the kernel's page map,
 * which MEM_PROTECT keeps in step, so every pointer the program passes can be checked
 * here (lx_user_ok) and every access it makes itself is checked by the CPU. Unmapped
 * pages are discarded by the kernel, so fresh mappings read as zero without a memset.
 * Writable-and-executable mappings are refused with EACCES (the virtual architecture
 * never maps a page W and X). */
#include <string.h>
#include "lx.h"

#define PAGE 4096u
#define PAGE_UP(x) (((x) + PAGE - 1) & ~(PAGE - 1))
#define MAX_VMAS 1024

#define MAP_SHARED 0x01
#define MAP_PRIVATE 0x02
#define MAP_FIXED 0x10
#define MAP_ANONYMOUS 0x20
#define MAP_FIXED_NOREPLACE 0x100000
#define MREMAP_MAYMOVE 1
#define MREMAP_FIXED 2

struct vma {
    uint32_t start, end;
    uint8_t prot;
};

static struct vma vmas[MAX_VMAS];
static int nvmas;
static uint32_t brk_start, brk_cur, mmap_top, mem_top;

static uint32_t denali_prot(int prot)
{
    uint32_t p = 0;
    if (prot & (LX_PROT_READ | LX_PROT_WRITE | LX_PROT_EXEC))
        p |= DENALI_MEM_R;
    if (prot & LX_PROT_WRITE)
        p |= DENALI_MEM_W;
    if (prot & LX_PROT_EXEC)
        p |= DENALI_MEM_X;
    return p;
}

/* prot < 0 unmaps and discards the contents; PROT_NONE (0) keeps them. */
static int kernel_protect(uint32_t start, uint32_t end, int prot)
{
    uint32_t p = prot < 0 ? DENALI_MEM_DISCARD : denali_prot(prot);
    struct denali_hc_mem_protect m = {start, end - start, p, 0};
    return denali_hc_mem_protect(&m) == DENALI_OK ? 0 : -LX_EINVAL;
}

/* Set [start, end) to prot in the table (prot 0 removes it). */
static int table_set(uint32_t start, uint32_t end, int prot)
{
    struct vma out[MAX_VMAS];
    int n = 0;
    for (int i = 0; i < nvmas; i++) {
        struct vma v = vmas[i];
        if (v.end <= start || v.start >= end) {
            if (n >= MAX_VMAS - 2)
                return -LX_ENOMEM;
            out[n++] = v;
            continue;
        }
        if (v.start < start)
            out[n++] = (struct vma){v.start, start, v.prot};
        if (v.end > end)
            out[n++] = (struct vma){end, v.end, v.prot};
    }
    if (prot >= 0 && n < MAX_VMAS)
        out[n++] = (struct vma){start, end, (uint8_t)prot};
    /* insertion sort by start (the table is short and nearly sorted), then merge */
    for (int i = 1; i < n; i++) {
        struct vma k = out[i];
        int j = i - 1;
        while (j >= 0 && out[j].start > k.start) {
            out[j + 1] = out[j];
            j--;
        }
        out[j + 1] = k;
    }
    nvmas = 0;
    for (int i = 0; i < n; i++) {
        if (nvmas && vmas[nvmas - 1].end == out[i].start && vmas[nvmas - 1].prot == out[i].prot)
            vmas[nvmas - 1].end = out[i].end;
        else
            vmas[nvmas++] = out[i];
    }
    return 0;
}

/* Map (prot >= 0; prot 0 is PROT_NONE: reserved but inaccessible) or unmap (prot < 0). */
static int map_range(uint32_t start, uint32_t end, int prot)
{
    if (start >= end)
        return 0;
    int r = kernel_protect(start, end, prot);
    if (r)
        return r;
    return table_set(start, end, prot);
}

static int overlaps(uint32_t start, uint32_t end)
{
    for (int i = 0; i < nvmas; i++)
        if (vmas[i].start < end && vmas[i].end > start)
            return 1;
    return 0;
}

int lx_user_ok(uint32_t p, uint32_t n, int prot)
{
    if (n == 0)
        return 1;
    if (p < LX_PROGRAM_BASE || p + n < p || p + n > mem_top)
        return 0;
    uint32_t end = p + n;
    int lo = 0, hi = nvmas - 1;
    while (lo <= hi) { /* find the area holding p */
        int mid = (lo + hi) / 2;
        if (vmas[mid].end <= p)
            lo = mid + 1;
        else if (vmas[mid].start > p)
            hi = mid - 1;
        else {
            for (int i = mid; i < nvmas && p < end; i++) {
                if (vmas[i].start > p || (vmas[i].prot & prot) != prot || !vmas[i].prot)
                    return 0;
                p = vmas[i].end;
            }
            return p >= end;
        }
    }
    return 0;
}

long lx_user_strlen(const char *s, size_t max)
{
    uint32_t p = (uint32_t)s;
    for (size_t i = 0; i <= max; i++) {
        if (((p + i) & (PAGE - 1)) == 0 || i == 0)
            if (!lx_user_ok(p + (uint32_t)i, 1, LX_PROT_READ))
                return -LX_EFAULT;
        if (!s[i])
            return (long)i;
    }
    return -LX_ENAMETOOLONG;
}

#define PT_LOAD 1
#define AT_PHDR 3
#define AT_PHNUM 5

void mm_init(uint32_t brk0, uint32_t stack_lo, uint32_t top)
{
    uint32_t auxv;
    mem_top = top;
    brk_start = brk_cur = PAGE_UP(brk0);
    mmap_top = stack_lo - 16 * PAGE; /* a gap below the stack */
    table_set(stack_lo, top, LX_PROT_READ | LX_PROT_WRITE);
    if (lx_cmdline_u32("lx.auxv", &auxv)) {
        uint32_t phdr = 0, phnum = 0;
        for (uint32_t *a = (uint32_t *)auxv; a[0]; a += 2) {
            if (a[0] == AT_PHDR)
                phdr = a[1];
            else if (a[0] == AT_PHNUM)
                phnum = a[1];
        }
        for (uint32_t i = 0; phdr && i < phnum; i++) {
            const uint32_t *ph = (const uint32_t *)(phdr + i * 32);
            if (ph[0] != PT_LOAD || !ph[5])
                continue;
            uint32_t start = ph[2] & ~(PAGE - 1), end = PAGE_UP(ph[2] + ph[5]);
            int prot = (ph[6] & 4 ? LX_PROT_READ : 0) | (ph[6] & 2 ? LX_PROT_WRITE : 0) |
                       (ph[6] & 1 ? LX_PROT_EXEC : 0);
            table_set(start, end, prot | LX_PROT_READ);
        }
    }
}

void mm_stats(uint32_t *mapped)
{
    uint32_t m = 0;
    for (int i = 0; i < nvmas; i++)
        m += vmas[i].end - vmas[i].start;
    *mapped = m;
}

long sys_brk(long a, long b, long c, long d, long e, long f)
{
    (void)b, (void)c, (void)d, (void)e, (void)f;
    uint32_t want = (uint32_t)a;
    if (want < brk_start)
        return (long)brk_cur;
    uint32_t old_end = PAGE_UP(brk_cur), new_end = PAGE_UP(want);
    if (new_end > old_end) {
        if (new_end > mmap_top || overlaps(old_end, new_end))
            return (long)brk_cur;
        if (map_range(old_end, new_end, LX_PROT_READ | LX_PROT_WRITE))
            return (long)brk_cur;
    } else if (new_end < old_end) {
        map_range(new_end, old_end, -1);
    }
    brk_cur = want;
    return (long)brk_cur;
}

/* The highest hole of len bytes below mmap_top and above the brk area. */
static uint32_t find_hole(uint32_t len)
{
    uint32_t hi = mmap_top;
    uint32_t floor = PAGE_UP(brk_cur) + 256 * PAGE;
    for (int i = nvmas - 1; i >= -1; i--) {
        uint32_t lo = i >= 0 ? vmas[i].end : floor;
        if (i >= 0 && vmas[i].start >= hi)
            continue;
        if (lo < floor)
            lo = floor;
        if (hi > lo && hi - lo >= len)
            return hi - len;
        if (i >= 0 && vmas[i].start < hi)
            hi = vmas[i].start;
        if (hi <= floor)
            break;
    }
    return 0;
}

long sys_mmap2(long addr_, long len_, long prot, long flags, long fd, long pgoff)
{
    uint32_t addr = (uint32_t)addr_, len = PAGE_UP((uint32_t)len_);
    if (!len_ || !len || (addr & (PAGE - 1)))
        return -LX_EINVAL;
    if ((prot & LX_PROT_WRITE) && (prot & LX_PROT_EXEC))
        return -LX_EACCES;
    if (!(flags & (MAP_SHARED | MAP_PRIVATE)))
        return -LX_EINVAL;
    struct lx_file *file = 0;
    if (!(flags & MAP_ANONYMOUS)) {
        file = fd_get((int)fd);
        if (!file)
            return -LX_EBADF;
        if (!vfs_is_file(file))
            return -LX_ENODEV;
        if ((flags & MAP_SHARED) && (prot & LX_PROT_WRITE))
            return -LX_EACCES; /* shared writable file mappings are not supported */
    }
    uint32_t start;
    if (flags & (MAP_FIXED | MAP_FIXED_NOREPLACE)) {
        if (addr < LX_PROGRAM_BASE || addr + len > mmap_top + 16 * PAGE || addr + len < addr)
            return -LX_ENOMEM;
        if ((flags & MAP_FIXED_NOREPLACE) && overlaps(addr, addr + len))
            return -LX_EEXIST;
        start = addr;
        map_range(start, start + len, -1); /* replace whatever was there (contents dropped) */
    } else {
        start = 0;
        if (addr >= LX_PROGRAM_BASE && addr + len <= mmap_top && addr + len > addr &&
            !overlaps(addr, addr + len))
            start = addr;
        if (!start)
            start = find_hole(len);
        if (!start)
            return -LX_ENOMEM;
    }
    int fill = file != 0;
    if (map_range(start, start + len, fill ? (LX_PROT_READ | LX_PROT_WRITE) : (int)(prot & 7)))
        return -LX_ENOMEM;
    if (fill) {
        long n = vfs_file_pread(file, (void *)start, (uint32_t)len_, (uint64_t)(uint32_t)pgoff * PAGE);
        if (n < 0) {
            map_range(start, start + len, -1);
            return n;
        }
        if ((prot & 7) != (LX_PROT_READ | LX_PROT_WRITE))
            map_range(start, start + len, (int)(prot & 7));
    }
    return (long)start;
}

long sys_old_mmap(long args, long b, long c, long d, long e, long f)
{
    (void)b, (void)c, (void)d, (void)e, (void)f;
    if (!UR(args, 24))
        return -LX_EFAULT;
    const uint32_t *a = (const uint32_t *)args;
    if (a[5] & (PAGE - 1))
        return -LX_EINVAL;
    return sys_mmap2((long)a[0], (long)a[1], (long)a[2], (long)a[3], (long)a[4], (long)(a[5] / PAGE));
}

long sys_munmap(long addr_, long len_, long c, long d, long e, long f)
{
    (void)c, (void)d, (void)e, (void)f;
    uint32_t addr = (uint32_t)addr_, len = PAGE_UP((uint32_t)len_);
    if ((addr & (PAGE - 1)) || !len_ || addr < LX_PROGRAM_BASE || addr + len > mem_top || addr + len < addr)
        return -LX_EINVAL;
    map_range(addr, addr + len, -1);
    return 0;
}

long sys_mprotect(long addr_, long len_, long prot, long d, long e, long f)
{
    (void)d, (void)e, (void)f;
    uint32_t addr = (uint32_t)addr_, len = PAGE_UP((uint32_t)len_);
    if ((addr & (PAGE - 1)) || addr < LX_PROGRAM_BASE || addr + len > mem_top || addr + len < addr)
        return -LX_EINVAL;
    if ((prot & LX_PROT_WRITE) && (prot & LX_PROT_EXEC))
        return -LX_EACCES;
    if (!len)
        return 0;
    /* every page must be mapped (Linux: ENOMEM otherwise) */
    for (uint32_t p = addr; p < addr + len;) {
        int found = 0;
        for (int i = 0; i < nvmas; i++)
            if (vmas[i].start <= p && p < vmas[i].end) {
                p = vmas[i].end;
                found = 1;
                break;
            }
        if (!found)
            return -LX_ENOMEM;
    }
    return map_range(addr, addr + len, (int)(prot & 7)) ? -LX_ENOMEM : 0;
}

static int prot_at(uint32_t p)
{
    for (int i = 0; i < nvmas; i++)
        if (vmas[i].start <= p && p < vmas[i].end)
            return vmas[i].prot;
    return -1;
}

long sys_mremap(long old_, long oldlen_, long newlen_, long flags, long newaddr, long f)
{
    (void)newaddr, (void)f;
    uint32_t old = (uint32_t)old_, oldlen = PAGE_UP((uint32_t)oldlen_), newlen = PAGE_UP((uint32_t)newlen_);
    if ((old & (PAGE - 1)) || !newlen || (flags & MREMAP_FIXED) || old < LX_PROGRAM_BASE)
        return -LX_EINVAL;
    int prot = prot_at(old);
    if (prot < 0 || !lx_user_ok(old, oldlen, prot ? prot : 0))
        return -LX_EFAULT;
    if (newlen <= oldlen) {
        map_range(old + newlen, old + oldlen, -1);
        return (long)old;
    }
    if (old + newlen <= mmap_top && old + newlen > old && !overlaps(old + oldlen, old + newlen)) {
        if (map_range(old + oldlen, old + newlen, prot))
            return -LX_ENOMEM;
        return (long)old;
    }
    if (!(flags & MREMAP_MAYMOVE))
        return -LX_ENOMEM;
    uint32_t dst = find_hole(newlen);
    if (!dst || map_range(dst, dst + newlen, LX_PROT_READ | LX_PROT_WRITE))
        return -LX_ENOMEM;
    if (!(prot & LX_PROT_READ))
        map_range(old, old + oldlen, LX_PROT_READ);
    lx_memcpy((void *)dst, (const void *)old, oldlen);
    map_range(old, old + oldlen, -1);
    if (prot != (LX_PROT_READ | LX_PROT_WRITE))
        map_range(dst, dst + newlen, prot);
    return (long)dst;
}

long sys_madvise(long a, long b, long c, long d, long e, long f)
{
    (void)a, (void)b, (void)c, (void)d, (void)e, (void)f;
    return 0;
}
