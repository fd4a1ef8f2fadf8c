/* vfs.c: the program's file system: a writable tree over the VM's disks.
 *
 * Each disk is a mount: the one named "root" (or else the first) is "/", every other
 * one "/NAME". A disk packed by `denali disk pack` holds a read-only DNLFS image
 * (guestos fs library, which checks it completely); its files and the directories
 * their paths imply become the tree. Everything the program changes is written back
 * to the same disk, into the blocks after the packed data (so through the VM's
 * copy-on-write overlay, or into the image itself with :rw):
 *
 *  - file data: in place for blocks a file already has, in blocks allocated from the
 *    free area for new ones;
 *  - the tree itself (names, modes, sizes, times, block lists): as a metadata record
 *    written, on sync/fsync and at exit, into freshly allocated blocks, then published
 *    by rewriting the older of two root slots (the first two free blocks) with a higher
 *    generation. A crash between the two keeps the previous state; a torn slot fails
 *    its checksum and the other one wins. The next boot on the same overlay mounts the
 *    newest valid record instead of the DNLFS directory. Format in docs/linux.md.
 *
 * A blank disk (all zero, e.g. `denali disk create`) starts as an empty file system;
 * a VM without disks gets an empty root kept in memory. Blocks go through a write-back
 * cache (reads ahead in runs of up to 256 blocks; dirty blocks written in runs).
 * Owner, group and permission bits are recorded but not enforced: the program runs
 * as root, alone. Hard links are not supported (EPERM). */
#include <fs/disk.h>
#include <fs/fs.h>
#include <stdlib.h>
#include <string.h>
#include "lx.h"

#define BLK 4096u
#define NAME_MAX 255
#define PATH_MAX 4096
#define MAX_MOUNTS 8
#define CACHE_BLOCKS 2048
#define HASH 4096
#define RUN_MAX 256
#define SLOT_MAGIC "DNLXMETA"
#define META_VERSION 1
#define SYMLOOP 40

struct mount;

struct inode {
    uint32_t ino;
    uint32_t mode;
    uint32_t nlink;
    uint32_t refs;               /* open files */
    uint64_t size;
    int64_t mtime;
    uint32_t mtime_ns;
    struct mount *mnt;
    struct inode *parent;        /* directories */
    struct dentry *children;     /* directories */
    uint32_t nchildren;
    uint64_t base_first;         /* packed (DNLFS) extent: blocks base_first.. */
    uint32_t base_count;
    uint32_t *map;               /* block map (phys, 0 = hole) once it differs from base */
    uint32_t map_len;
    char *link;                  /* symlink target */
};

struct dentry {
    char *name;
    struct inode *ino;
    struct dentry *next;
};

struct mount {
    char name[DENALI_DISK_NAME_MAX + 1];
    int has_disk, readonly, dirty;
    disk_t disk;
    uint64_t nblocks;
    uint64_t slot0;              /* the two root slots: slot0, slot0 + 1 */
    uint64_t alloc_lo;           /* first allocatable block */
    uint8_t *bitmap;             /* bit (b - alloc_lo) set: block b in use */
    uint64_t gen;
    uint64_t meta_first;
    uint32_t meta_blocks;
    uint8_t **ram;               /* RAM mount: block i at ram[i] (1-based) */
    uint32_t ram_len;
    uint32_t *ram_free;
    uint32_t ram_nfree;
    uint64_t free_hint;
    struct inode *root;
    uint32_t dev;
};

static struct mount mounts[MAX_MOUNTS];
static int nmounts;
static struct inode *root, *cwd;
static uint32_t next_ino = 2;
static uint32_t umask_v = 022;

uint32_t lx_umask(void) { return umask_v; }

/* ---- the block cache ---- */
struct cblk {
    struct mount *m;
    uint32_t blk;
    uint8_t valid, dirty;
    struct cblk *hnext, *prev, *next;
    uint8_t *data;
};
static struct cblk cache[CACHE_BLOCKS];
static struct cblk *hash[HASH];
static struct cblk lru; /* lru.next = most recent */
static uint8_t *cache_mem;
static uint8_t *staging; /* RUN_MAX blocks, for runs of reads and writes */

static unsigned hkey(struct mount *m, uint32_t blk)
{
    return (blk * 2654435761u + (uint32_t)(m - mounts)) % HASH;
}

static void lru_unlink(struct cblk *c)
{
    c->prev->next = c->next;
    c->next->prev = c->prev;
}

static void lru_front(struct cblk *c)
{
    c->next = lru.next;
    c->prev = &lru;
    lru.next->prev = c;
    lru.next = c;
}

static void cache_init(void)
{
    cache_mem = malloc((size_t)CACHE_BLOCKS * BLK);
    staging = malloc((size_t)RUN_MAX * BLK);
    if (!cache_mem || !staging) {
        lx_err("denali-linux: no memory for the block cache\n");
        exit(127);
    }
    lru.next = lru.prev = &lru;
    for (int i = 0; i < CACHE_BLOCKS; i++) {
        cache[i].data = cache_mem + (size_t)i * BLK;
        lru_front(&cache[i]);
    }
}

static struct cblk *cache_find(struct mount *m, uint32_t blk)
{
    for (struct cblk *c = hash[hkey(m, blk)]; c; c = c->hnext)
        if (c->valid && c->m == m && c->blk == blk)
            return c;
    return 0;
}

static void hash_remove(struct cblk *c)
{
    struct cblk **pp = &hash[hkey(c->m, c->blk)];
    while (*pp && *pp != c)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = c->hnext;
    c->valid = 0;
}

static int cmp_blk(const struct cblk *a, const struct cblk *b)
{
    if (a->m != b->m)
        return a->m < b->m ? -1 : 1;
    return a->blk < b->blk ? -1 : a->blk > b->blk;
}

/* Writes every dirty block of m (all mounts when m is 0), in runs. */
static int cache_flush(struct mount *m)
{
    static struct cblk *dirty[CACHE_BLOCKS];
    int n = 0, err = 0;
    for (int i = 0; i < CACHE_BLOCKS; i++)
        if (cache[i].valid && cache[i].dirty && (!m || cache[i].m == m))
            dirty[n++] = &cache[i];
    for (int gap = n / 2; gap > 0; gap /= 2) /* shell sort by (mount, block) */
        for (int i = gap; i < n; i++)
            for (int j = i; j >= gap && cmp_blk(dirty[j - gap], dirty[j]) > 0; j -= gap) {
                struct cblk *t = dirty[j];
                dirty[j] = dirty[j - gap];
                dirty[j - gap] = t;
            }
    for (int i = 0; i < n;) {
        int k = 1;
        while (i + k < n && k < RUN_MAX && dirty[i + k]->m == dirty[i]->m &&
               dirty[i + k]->blk == dirty[i]->blk + (uint32_t)k)
            k++;
        for (int j = 0; j < k; j++)
            lx_memcpy(staging + (size_t)j * BLK, dirty[i + j]->data, BLK);
        if (disk_write(&dirty[i]->m->disk, dirty[i]->blk, (uint32_t)k, staging) != DENALI_OK)
            err = -LX_EIO;
        for (int j = 0; j < k; j++)
            dirty[i + j]->dirty = 0;
        i += k;
    }
    return err;
}

static struct cblk *cache_slot(struct mount *m, uint32_t blk)
{
    struct cblk *c = lru.prev;
    if (c->valid && c->dirty)
        cache_flush(0);
    if (c->valid)
        hash_remove(c);
    c->m = m;
    c->blk = blk;
    c->valid = 1;
    c->dirty = 0;
    unsigned h = hkey(m, blk);
    c->hnext = hash[h];
    hash[h] = c;
    lru_unlink(c);
    lru_front(c);
    return c;
}

/* The cached block (read, with up to run-1 following blocks read ahead); 0 on I/O error. */
static struct cblk *cache_get(struct mount *m, uint32_t blk, uint32_t run, int need_data)
{
    struct cblk *c = cache_find(m, blk);
    if (c) {
        lru_unlink(c);
        lru_front(c);
        return c;
    }
    if (!need_data) {
        c = cache_slot(m, blk);
        memset(c->data, 0, BLK);
        return c;
    }
    if (run < 1)
        run = 1;
    if (run > RUN_MAX)
        run = RUN_MAX;
    for (uint32_t k = 1; k < run; k++)
        if (cache_find(m, blk + k)) {
            run = k;
            break;
        }
    if (disk_read(&m->disk, blk, run, staging) != DENALI_OK)
        return 0;
    for (uint32_t k = run; k-- > 0;) { /* the first block last: it ends most recent */
        struct cblk *e = cache_slot(m, blk + k);
        lx_memcpy(e->data, staging + (size_t)k * BLK, BLK);
    }
    return cache_find(m, blk);
}

/* ---- block allocation ---- */
static uint32_t alloc_block(struct mount *m)
{
    if (!m->has_disk) {
        if (m->ram_nfree)
            return m->ram_free[--m->ram_nfree];
        uint8_t *b = malloc(BLK);
        uint8_t **t = realloc(m->ram, sizeof(uint8_t *) * (m->ram_len + 2));
        if (!b || !t) {
            free(b);
            if (t)
                m->ram = t;
            return 0;
        }
        m->ram = t;
        m->ram[++m->ram_len] = b;
        return m->ram_len;
    }
    uint64_t span = m->nblocks - m->alloc_lo;
    for (uint64_t i = 0; i < span; i++) {
        uint64_t b = (m->free_hint + i) % span;
        if (!(m->bitmap[b / 8] & (1u << (b % 8)))) {
            m->bitmap[b / 8] |= (uint8_t)(1u << (b % 8));
            m->free_hint = b + 1;
            return (uint32_t)(m->alloc_lo + b);
        }
    }
    return 0;
}

static void free_block(struct mount *m, uint32_t blk)
{
    if (!blk)
        return;
    if (!m->has_disk) {
        uint32_t *t = realloc(m->ram_free, sizeof(uint32_t) * (m->ram_nfree + 1));
        if (t) {
            m->ram_free = t;
            m->ram_free[m->ram_nfree++] = blk;
            memset(m->ram[blk], 0, BLK);
        }
        return;
    }
    if (blk < m->alloc_lo || blk >= m->nblocks)
        return; /* packed blocks are never reused */
    uint64_t b = blk - m->alloc_lo;
    m->bitmap[b / 8] &= (uint8_t)~(1u << (b % 8));
    struct cblk *c = cache_find(m, blk);
    if (c) {
        c->dirty = 0;
        hash_remove(c);
    }
}

static void mark_used(struct mount *m, uint64_t blk, uint64_t count)
{
    for (uint64_t b = blk; b < blk + count; b++)
        if (b >= m->alloc_lo && b < m->nblocks) {
            uint64_t i = b - m->alloc_lo;
            m->bitmap[i / 8] |= (uint8_t)(1u << (i % 8));
        }
}

/* ---- inodes and their blocks ---- */
static struct inode *inode_new(struct mount *m, uint32_t mode)
{
    struct inode *n = calloc(1, sizeof *n);
    if (!n)
        return 0;
    n->ino = next_ino++;
    n->mode = mode;
    n->nlink = (mode & LX_S_IFMT) == LX_S_IFDIR ? 2 : 1;
    n->mnt = m;
    uint64_t t = lx_realtime_ns();
    n->mtime = (int64_t)(t / 1000000000ull);
    n->mtime_ns = (uint32_t)(t % 1000000000ull);
    return n;
}

static int is_dir(const struct inode *n) { return (n->mode & LX_S_IFMT) == LX_S_IFDIR; }
static int is_reg(const struct inode *n) { return (n->mode & LX_S_IFMT) == LX_S_IFREG; }
static int is_lnk(const struct inode *n) { return (n->mode & LX_S_IFMT) == LX_S_IFLNK; }

static uint32_t block_of(const struct inode *n, uint32_t i)
{
    if (n->map)
        return i < n->map_len ? n->map[i] : 0;
    return i < n->base_count ? (uint32_t)(n->base_first + i) : 0;
}

/* How many blocks from file block i on are contiguous on disk (for read-ahead). */
static uint32_t run_of(const struct inode *n, uint32_t i, uint32_t limit)
{
    uint32_t b = block_of(n, i), k = 1;
    uint32_t nb = (uint32_t)((n->size + BLK - 1) / BLK);
    while (k < limit && i + k < nb && block_of(n, i + k) == b + k)
        k++;
    return k;
}

static int materialize_map(struct inode *n, uint32_t need)
{
    if (n->map && n->map_len >= need)
        return 0;
    uint32_t len = n->map ? n->map_len : n->base_count;
    if (need < len)
        need = len;
    uint32_t cap = need < 16 ? 16 : need + need / 2;
    uint32_t *m = realloc(n->map, sizeof(uint32_t) * cap);
    if (!m)
        return -LX_ENOMEM;
    if (!n->map)
        for (uint32_t i = 0; i < n->base_count; i++)
            m[i] = (uint32_t)(n->base_first + i);
    for (uint32_t i = len; i < cap; i++)
        m[i] = 0;
    n->map = m;
    n->map_len = cap;
    return 0;
}

static long read_inode(struct inode *n, void *buf, uint32_t len, uint64_t off)
{
    if (off >= n->size)
        return 0;
    if (len > n->size - off)
        len = (uint32_t)(n->size - off);
    uint8_t *out = buf;
    uint32_t done = 0;
    while (done < len) {
        uint64_t pos = off + done;
        uint32_t bi = (uint32_t)(pos / BLK), bo = (uint32_t)(pos % BLK);
        uint32_t k = BLK - bo < len - done ? BLK - bo : len - done;
        uint32_t phys = block_of(n, bi);
        if (!phys) {
            memset(out + done, 0, k);
        } else if (!n->mnt->has_disk) {
            lx_memcpy(out + done, n->mnt->ram[phys] + bo, k);
        } else {
            struct cblk *c = cache_get(n->mnt, phys, run_of(n, bi, RUN_MAX), 1);
            if (!c)
                return done ? (long)done : -LX_EIO;
            lx_memcpy(out + done, c->data + bo, k);
        }
        done += k;
    }
    return (long)done;
}

static void touch(struct inode *n)
{
    uint64_t t = lx_realtime_ns();
    n->mtime = (int64_t)(t / 1000000000ull);
    n->mtime_ns = (uint32_t)(t % 1000000000ull);
    n->mnt->dirty = 1;
}

static long write_inode(struct inode *n, const void *buf, uint32_t len, uint64_t off)
{
    struct mount *m = n->mnt;
    if (m->readonly)
        return -LX_EROFS;
    if (off + len > (1ull << 40))
        return -LX_EFBIG;
    const uint8_t *in = buf;
    uint32_t done = 0;
    while (done < len) {
        uint64_t pos = off + done;
        uint32_t bi = (uint32_t)(pos / BLK), bo = (uint32_t)(pos % BLK);
        uint32_t k = BLK - bo < len - done ? BLK - bo : len - done;
        uint32_t phys = block_of(n, bi);
        int fresh = 0;
        if (!phys) {
            if (materialize_map(n, bi + 1))
                return done ? (long)done : -LX_ENOMEM;
            phys = alloc_block(m);
            if (!phys)
                return done ? (long)done : -LX_ENOSPC;
            n->map[bi] = phys;
            fresh = 1;
        }
        if (!m->has_disk) {
            lx_memcpy(m->ram[phys] + bo, in + done, k);
        } else {
            int whole = bo == 0 && k == BLK;
            struct cblk *c = cache_get(m, phys, 1, !(whole || fresh));
            if (!c)
                return done ? (long)done : -LX_EIO;
            lx_memcpy(c->data + bo, in + done, k);
            c->dirty = 1;
        }
        done += k;
        if (pos + k > n->size)
            n->size = pos + k;
    }
    touch(n);
    return (long)done;
}

static long truncate_inode(struct inode *n, uint64_t size)
{
    if (n->mnt->readonly)
        return -LX_EROFS;
    if (!is_reg(n))
        return is_dir(n) ? -LX_EISDIR : -LX_EINVAL;
    uint32_t keep = (uint32_t)((size + BLK - 1) / BLK);
    uint32_t have = (uint32_t)((n->size + BLK - 1) / BLK);
    if (size < n->size) {
        if (materialize_map(n, have))
            return -LX_ENOMEM;
        for (uint32_t i = keep; i < n->map_len; i++) {
            free_block(n->mnt, n->map[i]);
            n->map[i] = 0;
        }
        if (size % BLK) { /* zero the tail of the last kept block */
            uint32_t z = BLK - (uint32_t)(size % BLK);
            static uint8_t zeros[BLK];
            uint64_t was = n->size;
            n->size = size;
            if (block_of(n, keep - 1))
                write_inode(n, zeros, z, size);
            n->size = size < was ? size : was;
        }
    }
    n->size = size;
    touch(n);
    return 0;
}

static void inode_release(struct inode *n)
{
    if (n->nlink || n->refs)
        return;
    if (is_reg(n)) {
        uint32_t have = (uint32_t)((n->size + BLK - 1) / BLK);
        if (n->map) {
            for (uint32_t i = 0; i < n->map_len; i++)
                free_block(n->mnt, n->map[i]);
        } else {
            for (uint32_t i = 0; i < have && i < n->base_count; i++)
                free_block(n->mnt, (uint32_t)(n->base_first + i));
        }
    }
    free(n->map);
    free(n->link);
    free(n);
}

/* ---- directories ---- */
static struct dentry *dir_find(struct inode *d, const char *name, size_t len)
{
    for (struct dentry *e = d->children; e; e = e->next)
        if (strlen(e->name) == len && !memcmp(e->name, name, len))
            return e;
    return 0;
}

/* Appends at the end, so getdents lists in creation order (packed files: path order). */
static int dir_add(struct inode *d, const char *name, size_t len, struct inode *n)
{
    struct dentry *e = calloc(1, sizeof *e);
    char *nm = malloc(len + 1);
    if (!e || !nm) {
        free(e);
        free(nm);
        return -LX_ENOMEM;
    }
    memcpy(nm, name, len);
    nm[len] = 0;
    e->name = nm;
    e->ino = n;
    struct dentry **pp = &d->children;
    while (*pp)
        pp = &(*pp)->next;
    *pp = e;
    d->nchildren++;
    if (is_dir(n)) {
        n->parent = d;
        d->nlink++;
    }
    d->mnt->dirty = 1;
    return 0;
}

static void dir_remove(struct inode *d, struct dentry *e)
{
    for (struct dentry **pp = &d->children; *pp; pp = &(*pp)->next) {
        if (*pp == e) {
            *pp = e->next;
            break;
        }
    }
    d->nchildren--;
    if (is_dir(e->ino))
        d->nlink--;
    free(e->name);
    free(e);
    d->mnt->dirty = 1;
}

/* The directory for a packed path's parent, creating the implied directories. */
static struct inode *implied_dir(struct mount *m, const char *path, const char **leaf)
{
    struct inode *d = m->root;
    const char *p = path;
    for (;;) {
        const char *slash = strchr(p, '/');
        if (!slash) {
            *leaf = p;
            return d;
        }
        struct dentry *e = dir_find(d, p, (size_t)(slash - p));
        if (!e) {
            struct inode *n = inode_new(m, LX_S_IFDIR | 0755);
            if (!n || dir_add(d, p, (size_t)(slash - p), n))
                return 0;
            n->mtime = 0;
            e = dir_find(d, p, (size_t)(slash - p));
        }
        if (!is_dir(e->ino))
            return 0;
        d = e->ino;
        p = slash + 1;
    }
}

/* ---- the metadata record ---- */
struct slot {
    char magic[8];
    uint32_t version, crc;     /* crc of the metadata bytes */
    uint64_t gen, first;
    uint32_t blocks, bytes;
    uint32_t slot_crc;         /* of the 40 bytes before it */
    uint32_t pad;
};
_Static_assert(sizeof(struct slot) == 48, "slot");

struct buf { uint8_t *p; uint32_t len, cap; int err; };

static void put(struct buf *b, const void *d, uint32_t n)
{
    if (b->err)
        return;
    if (b->len + n > b->cap) {
        uint32_t cap = b->cap ? b->cap * 2 : 65536;
        while (cap < b->len + n)
            cap *= 2;
        uint8_t *p = realloc(b->p, cap);
        if (!p) {
            b->err = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, d, n);
    b->len += n;
}

static void put32(struct buf *b, uint32_t v) { put(b, &v, 4); }
static void put64(struct buf *b, uint64_t v) { put(b, &v, 8); }

static void ser(struct buf *b, struct mount *m, struct inode *n, uint32_t parent, const char *name,
                uint32_t *count)
{
    uint32_t me = (*count)++;
    uint32_t nblocks = is_reg(n) ? (uint32_t)((n->size + BLK - 1) / BLK) : 0;
    uint32_t nl = (uint32_t)strlen(name), ll = n->link ? (uint32_t)strlen(n->link) : 0;
    /* extents: runs of contiguous blocks (holes are simply absent) */
    uint32_t next = 0;
    for (uint32_t i = 0; i < nblocks;) {
        uint32_t p = block_of(n, i), k = 1;
        while (i + k < nblocks && p && block_of(n, i + k) == p + k)
            k++;
        if (p)
            next++;
        i += k;
    }
    put32(b, parent);
    put32(b, n->mode);
    put64(b, n->size);
    put64(b, (uint64_t)n->mtime);
    put32(b, n->mtime_ns);
    put32(b, nl | (ll << 16));
    put32(b, next);
    put(b, name, nl);
    if (ll)
        put(b, n->link, ll);
    for (uint32_t i = 0; i < nblocks;) {
        uint32_t p = block_of(n, i), k = 1;
        while (i + k < nblocks && p && block_of(n, i + k) == p + k)
            k++;
        if (p) {
            put32(b, i);
            put32(b, p);
            put32(b, k);
        }
        i += k;
    }
    if (is_dir(n))
        for (struct dentry *e = n->children; e; e = e->next)
            if (e->ino->mnt == m)
                ser(b, m, e->ino, me, e->name, count);
}

/* Allocates count contiguous blocks; 0 when the free area has no such run. */
static uint64_t alloc_run(struct mount *m, uint32_t count)
{
    uint64_t span = m->nblocks - m->alloc_lo, run = 0;
    for (uint64_t i = 0; i < span; i++) {
        if (m->bitmap[i / 8] & (1u << (i % 8))) {
            run = 0;
            continue;
        }
        if (++run == count) {
            uint64_t first = i + 1 - count;
            mark_used(m, m->alloc_lo + first, count);
            return m->alloc_lo + first;
        }
    }
    return 0;
}

static int sync_mount(struct mount *m)
{
    if (!m->has_disk || m->readonly)
        return 0;
    int err = cache_flush(m);
    if (!m->dirty)
        return err;
    struct buf b = {0, 0, 0, 0};
    uint32_t count = 0;
    put32(&b, 0); /* count, patched below */
    ser(&b, m, m->root, 0xffffffffu, "", &count);
    if (b.err) {
        free(b.p);
        return -LX_ENOMEM;
    }
    memcpy(b.p, &count, 4);
    uint32_t blocks = (b.len + BLK - 1) / BLK;
    uint64_t first = alloc_run(m, blocks);
    if (!first) {
        free(b.p);
        lx_err("denali-linux: disk %s: no room for the file-system record\n", m->name);
        return -LX_ENOSPC;
    }
    uint8_t *out = realloc(b.p, (size_t)blocks * BLK);
    if (!out) {
        free(b.p);
        return -LX_ENOMEM;
    }
    memset(out + b.len, 0, (size_t)blocks * BLK - b.len);
    int rc = disk_write(&m->disk, first, blocks, out);
    struct slot s;
    memset(&s, 0, sizeof s);
    memcpy(s.magic, SLOT_MAGIC, 8);
    s.version = META_VERSION;
    s.crc = fs_crc32(0, out, b.len);
    s.gen = m->gen + 1;
    s.first = first;
    s.blocks = blocks;
    s.bytes = b.len;
    s.slot_crc = fs_crc32(0, &s, 40);
    free(out);
    if (rc == DENALI_OK)
        rc = disk_flush(&m->disk);
    if (rc == DENALI_OK) {
        memset(staging, 0, BLK);
        memcpy(staging, &s, sizeof s);
        rc = disk_write(&m->disk, m->slot0 + (s.gen & 1), 1, staging);
    }
    if (rc == DENALI_OK)
        rc = disk_flush(&m->disk);
    if (rc != DENALI_OK) {
        for (uint32_t i = 0; i < blocks; i++)
            free_block(m, (uint32_t)(first + i));
        return -LX_EIO;
    }
    for (uint32_t i = 0; i < m->meta_blocks; i++) /* the previous record is free now */
        free_block(m, (uint32_t)(m->meta_first + i));
    m->gen = s.gen;
    m->meta_first = first;
    m->meta_blocks = blocks;
    m->dirty = 0;
    return err;
}

void vfs_sync(void)
{
    for (int i = 0; i < nmounts; i++)
        sync_mount(&mounts[i]);
}

/* Reads the newest valid record; 1 when one was mounted, 0 when there is none. */
static int load_record(struct mount *m)
{
    struct slot best;
    memset(&best, 0, sizeof best);
    int have = 0;
    for (int i = 0; i < 2; i++) {
        if (disk_read(&m->disk, m->slot0 + (uint64_t)i, 1, staging) != DENALI_OK)
            continue;
        struct slot s;
        memcpy(&s, staging, sizeof s);
        if (memcmp(s.magic, SLOT_MAGIC, 8) || s.version != META_VERSION ||
            s.slot_crc != fs_crc32(0, &s, 40))
            continue;
        if (s.first < m->alloc_lo || s.first + s.blocks > m->nblocks || !s.blocks ||
            s.bytes > (uint64_t)s.blocks * BLK || s.bytes < 4)
            continue;
        if (!have || s.gen > best.gen) {
            best = s;
            have = 1;
        }
    }
    if (!have)
        return 0;
    uint8_t *p = malloc((size_t)best.blocks * BLK);
    if (!p || disk_read(&m->disk, best.first, best.blocks, p) != DENALI_OK ||
        fs_crc32(0, p, best.bytes) != best.crc) {
        free(p);
        lx_err("denali-linux: disk %s: the file-system record is damaged; using the packed files\n", m->name);
        return 0;
    }
    uint32_t count, pos = 4;
    memcpy(&count, p, 4);
    struct inode **byidx = calloc(count ? count : 1, sizeof *byidx);
    if (!byidx) {
        free(p);
        return 0;
    }
    int ok = 1;
    for (uint32_t idx = 0; idx < count && ok; idx++) {
        uint32_t hdr[9];
        if (pos + 36 > best.bytes) {
            ok = 0;
            break;
        }
        memcpy(hdr, p + pos, 36);
        pos += 36;
        uint32_t parent = hdr[0], mode = hdr[1], nl = hdr[7] & 0xffff, ll = hdr[7] >> 16, next = hdr[8];
        uint64_t size = (uint64_t)hdr[2] | ((uint64_t)hdr[3] << 32);
        if (pos + nl + ll + next * 12ull > best.bytes || nl > NAME_MAX || (idx && !nl) ||
            (idx && parent >= idx) || (!idx && parent != 0xffffffffu)) {
            ok = 0;
            break;
        }
        struct inode *n = idx ? inode_new(m, mode) : m->root;
        if (!n) {
            ok = 0;
            break;
        }
        n->mode = mode;
        n->size = size;
        n->mtime = (int64_t)((uint64_t)hdr[4] | ((uint64_t)hdr[5] << 32));
        n->mtime_ns = hdr[6];
        const char *name = (const char *)p + pos;
        pos += nl;
        if (ll) {
            n->link = malloc(ll + 1);
            if (n->link) {
                memcpy(n->link, p + pos, ll);
                n->link[ll] = 0;
            }
        }
        pos += ll;
        uint32_t nblocks = is_reg(n) ? (uint32_t)((size + BLK - 1) / BLK) : 0;
        if (next && (!is_reg(n) || materialize_map(n, nblocks))) {
            ok = 0;
            break;
        }
        for (uint32_t k = 0; k < next; k++) {
            uint32_t e[3];
            memcpy(e, p + pos, 12);
            pos += 12;
            if ((uint64_t)e[0] + e[2] > nblocks || (uint64_t)e[1] + e[2] > m->nblocks || !e[1]) {
                ok = 0;
                break;
            }
            for (uint32_t j = 0; j < e[2]; j++)
                n->map[e[0] + j] = e[1] + j;
            mark_used(m, e[1], e[2]);
        }
        byidx[idx] = n;
        if (idx) {
            struct inode *d = byidx[parent];
            if (!is_dir(d) || dir_add(d, name, nl, n)) {
                ok = 0;
                break;
            }
        }
    }
    free(byidx);
    free(p);
    if (!ok) {
        lx_err("denali-linux: disk %s: the file-system record is inconsistent\n", m->name);
        return -1;
    }
    mark_used(m, best.first, best.blocks);
    m->gen = best.gen;
    m->meta_first = best.first;
    m->meta_blocks = best.blocks;
    m->dirty = 0;
    return 1;
}

static int mount_disk(struct mount *m, uint32_t index)
{
    if (disk_open_index(index, &m->disk) != DENALI_OK)
        return -1;
    strlcpy(m->name, m->disk.name, sizeof m->name);
    m->has_disk = 1;
    m->readonly = disk_readonly(&m->disk);
    m->nblocks = m->disk.blocks;
    m->root = inode_new(m, LX_S_IFDIR | 0755);
    m->root->mtime = 0;
    fs_t *fs = 0;
    uint64_t free_start = 0;
    if (fs_mount(m->name, &fs) == FS_OK) {
        if (disk_read(&m->disk, 0, 1, staging) != DENALI_OK)
            return -1;
        uint64_t ds, db;
        memcpy(&ds, staging + 40, 8);
        memcpy(&db, staging + 48, 8);
        free_start = ds + db;
    } else {
        /* not DNLFS: a blank disk (or one this personality formatted) */
        if (disk_read(&m->disk, 0, 1, staging) != DENALI_OK)
            return -1;
        int blank = 1;
        for (uint32_t i = 0; i < BLK; i++)
            if (staging[i]) {
                blank = 0;
                break;
            }
        if (!blank && memcmp(staging, SLOT_MAGIC, 8)) {
            lx_err("denali-linux: disk %s holds neither DNLFS nor a blank disk; not mounted\n", m->name);
            return -1;
        }
    }
    m->slot0 = free_start;
    m->alloc_lo = free_start + 2;
    if (m->alloc_lo > m->nblocks)
        m->alloc_lo = m->nblocks;
    uint64_t span = m->nblocks - m->alloc_lo;
    m->bitmap = calloc((size_t)(span / 8 + 1), 1);
    if (!m->bitmap)
        return -1;
    int loaded = free_start + 2 <= m->nblocks ? load_record(m) : 0;
    if (loaded < 0)
        return -1;
    if (!loaded && fs) {
        uint32_t count = fs_count(fs);
        for (uint32_t i = 0; i < count; i++) {
            fs_stat_t st;
            fs_file_t f;
            if (fs_stat_index(fs, i, &st) != FS_OK || fs_open(fs, st.path, &f) != FS_OK)
                continue;
            const char *leaf;
            struct inode *d = implied_dir(m, st.path, &leaf);
            if (!d)
                continue;
            struct inode *n = inode_new(m, LX_S_IFREG | (st.mode & 07777));
            if (!n)
                break;
            n->size = st.size;
            n->mtime = (int64_t)st.mtime;
            n->mtime_ns = 0;
            n->base_first = f.first_block;
            n->base_count = (uint32_t)((st.size + BLK - 1) / BLK);
            if (dir_add(d, leaf, strlen(leaf), n))
                break;
            for (struct inode *p = d; p; p = p->parent) /* directories: their newest file */
                if (p->mtime < n->mtime)
                    p->mtime = n->mtime;
        }
        m->dirty = 0;
    }
    if (m->readonly)
        m->dirty = 0;
    return 0;
}

void vfs_init(void)
{
    cache_init();
    for (uint32_t i = 0; i < DENALI_DISK_MAX_DISKS && nmounts < MAX_MOUNTS; i++) {
        disk_t d;
        if (disk_open_index(i, &d) != DENALI_OK)
            break;
        struct mount *m = &mounts[nmounts];
        memset(m, 0, sizeof *m);
        m->dev = 0x800 + (uint32_t)nmounts;
        if (mount_disk(m, i) == 0)
            nmounts++;
    }
    int ri = 0;
    for (int i = 0; i < nmounts; i++)
        if (!strcmp(mounts[i].name, "root"))
            ri = i;
    if (!nmounts) { /* no disk: an empty root in memory */
        struct mount *m = &mounts[nmounts++];
        memset(m, 0, sizeof *m);
        strlcpy(m->name, "ram", sizeof m->name);
        m->dev = 0x800;
        m->root = inode_new(m, LX_S_IFDIR | 0755);
    }
    root = mounts[ri].root;
    root->parent = root;
    for (int i = 0; i < nmounts; i++) {
        if (i == ri)
            continue;
        struct dentry *e = dir_find(root, mounts[i].name, strlen(mounts[i].name));
        if (e) {
            lx_err("denali-linux: disk %s hides /%s of the root disk\n", mounts[i].name, mounts[i].name);
            dir_remove(root, e);
        }
        struct mount *rm = root->mnt;
        int was = rm->dirty;
        dir_add(root, mounts[i].name, strlen(mounts[i].name), mounts[i].root);
        rm->dirty = was;
    }
    cwd = root;
    char path[256];
    if (cmdline_get("lx.cwd", path, sizeof path) > 0)
        if (sys_chdir((long)path, 0, 0, 0, 0, 0) < 0) {
            lx_err("denali-linux: cannot change to directory %s\n", path);
            exit(127);
        }
}

/* ---- path resolution ---- */
static struct inode *start_dir(int dirfd, const char *path, long *err)
{
    if (path[0] == '/')
        return root;
    if (dirfd == LX_AT_FDCWD)
        return cwd;
    struct lx_file *f = fd_get(dirfd);
    if (!f) {
        *err = -LX_EBADF;
        return 0;
    }
    if (f->kind != LX_F_DIR) {
        *err = -LX_ENOTDIR;
        return 0;
    }
    return f->priv;
}

/* Resolves path. With parent_out, stops at the last component: *parent_out is its
 * directory and leaf, leaf_len name it (the target itself may not exist). */
static long resolve(int dirfd, const char *path, int follow_last, struct inode **out,
                    struct inode **parent_out, const char **leaf, size_t *leaf_len, int depth)
{
    long err = 0;
    if (!*path)
        return -LX_ENOENT;
    struct inode *d = start_dir(dirfd, path, &err);
    if (!d)
        return err;
    const char *p = path;
    for (;;) {
        while (*p == '/')
            p++;
        const char *s = p;
        while (*p && *p != '/')
            p++;
        size_t len = (size_t)(p - s);
        const char *rest = p;
        while (*rest == '/')
            rest++;
        int last = !*rest;
        if (len > NAME_MAX)
            return -LX_ENAMETOOLONG;
        if (!is_dir(d))
            return -LX_ENOTDIR;
        if (len == 0) { /* "/" or trailing slashes */
            if (parent_out) {
                *parent_out = d->parent ? d->parent : d;
                *leaf = ".";
                *leaf_len = 1;
            }
            *out = d;
            return 0;
        }
        if (last && parent_out) {
            *parent_out = d;
            *leaf = s;
            *leaf_len = len;
            if (len == 1 && s[0] == '.') {
                *out = d;
                return 0;
            }
            if (len == 2 && s[0] == '.' && s[1] == '.') {
                *out = d->parent;
                return 0;
            }
            struct dentry *e = dir_find(d, s, len);
            *out = e ? e->ino : 0;
            if (e && follow_last && is_lnk(e->ino)) {
                if (depth >= SYMLOOP)
                    return -LX_ELOOP;
                struct inode *t = 0;
                long r = resolve(LX_AT_FDCWD, e->ino->link, 1, &t, 0, 0, 0, depth + 1);
                if (r == 0)
                    *out = t;
                else if (r != -LX_ENOENT)
                    return r;
            }
            return 0;
        }
        struct inode *next;
        if (len == 1 && s[0] == '.') {
            next = d;
        } else if (len == 2 && s[0] == '.' && s[1] == '.') {
            next = d->parent;
        } else {
            struct dentry *e = dir_find(d, s, len);
            if (!e)
                return -LX_ENOENT;
            next = e->ino;
            if (is_lnk(next) && (!last || follow_last)) {
                if (depth >= SYMLOOP)
                    return -LX_ELOOP;
                struct inode *t;
                struct inode *save = cwd;
                cwd = d; /* a relative target is relative to the link's directory */
                long r = resolve(LX_AT_FDCWD, next->link, 1, &t, 0, 0, 0, depth + 1);
                cwd = save;
                if (r)
                    return r;
                next = t;
            }
        }
        if (last) {
            *out = next;
            return 0;
        }
        d = next;
        p = rest;
    }
}

static long user_path(long up, const char **out)
{
    long n = lx_user_strlen((const char *)up, PATH_MAX - 1);
    if (n < 0)
        return n == -LX_ENAMETOOLONG ? n : -LX_EFAULT;
    *out = (const char *)up;
    return 0;
}

static long lookup(int dirfd, long up, int follow, struct inode **out)
{
    const char *path;
    long r = user_path(up, &path);
    if (r)
        return r;
    struct inode *n = 0;
    r = resolve(dirfd, path, follow, &n, 0, 0, 0, 0);
    if (r)
        return r;
    *out = n;
    return n ? 0 : -LX_ENOENT;
}

/* ---- open files ---- */
static long vf_read(struct lx_file *f, void *buf, uint32_t n)
{
    long r = read_inode(f->priv, buf, n, f->pos);
    if (r > 0)
        f->pos += (uint64_t)r;
    return r;
}

static long vf_write(struct lx_file *f, const void *buf, uint32_t n)
{
    struct inode *in = f->priv;
    if (f->flags & LX_O_APPEND)
        f->pos = in->size;
    long r = write_inode(in, buf, n, f->pos);
    if (r > 0)
        f->pos += (uint64_t)r;
    return r;
}

static long vf_pread(struct lx_file *f, void *buf, uint32_t n, uint64_t off)
{
    return read_inode(f->priv, buf, n, off);
}

static long vf_pwrite(struct lx_file *f, const void *buf, uint32_t n, uint64_t off)
{
    return write_inode(f->priv, buf, n, off);
}

static int vf_poll(struct lx_file *f)
{
    (void)f;
    return LX_POLLIN | LX_POLLOUT;
}

static void vf_close(struct lx_file *f)
{
    struct inode *n = f->priv;
    n->refs--;
    inode_release(n);
}

static void fill_stat(const struct inode *n, struct lx_stat64 *s)
{
    memset(s, 0, sizeof *s);
    s->st_dev = n->mnt->dev;
    s->st_ino = n->ino;
    s->st_ino32 = n->ino;
    s->st_mode = n->mode;
    s->st_nlink = n->nlink;
    s->st_size = (int64_t)(is_lnk(n) ? strlen(n->link) : n->size);
    if (is_dir(n))
        s->st_size = 4096;
    s->st_blksize = BLK;
    uint64_t blocks = 0;
    if (is_reg(n)) {
        uint32_t nb = (uint32_t)((n->size + BLK - 1) / BLK);
        for (uint32_t i = 0; i < nb; i++)
            if (block_of(n, i))
                blocks++;
    } else if (is_dir(n)) {
        blocks = 1;
    }
    s->st_blocks = blocks * 8;
    s->st_atime = s->st_mtime = s->st_ctime = (uint32_t)n->mtime;
    s->st_atime_nsec = s->st_mtime_nsec = s->st_ctime_nsec = n->mtime_ns;
}

static long vf_stat(struct lx_file *f, void *st)
{
    fill_stat(f->priv, st);
    return 0;
}

static long vf_seek(struct lx_file *f, int64_t off, int whence, uint64_t *out)
{
    struct inode *n = f->priv;
    int64_t base;
    if (whence == 0)
        base = 0;
    else if (whence == 1)
        base = (int64_t)f->pos;
    else if (whence == 2)
        base = (int64_t)n->size;
    else if (whence == 3 || whence == 4) { /* SEEK_DATA, SEEK_HOLE: no holes are reported */
        if (off < 0 || (uint64_t)off >= n->size)
            return -LX_ENXIO;
        f->pos = whence == 3 ? (uint64_t)off : n->size;
        *out = f->pos;
        return 0;
    } else
        return -LX_EINVAL;
    if (base + off < 0)
        return -LX_EINVAL;
    f->pos = (uint64_t)(base + off);
    if (f->kind == LX_F_DIR)
        f->dir_pos = (uint32_t)f->pos;
    *out = f->pos;
    return 0;
}

static long vf_ioctl(struct lx_file *f, uint32_t cmd, uint32_t arg)
{
    if (cmd == 0x541B) { /* FIONREAD */
        struct inode *n = f->priv;
        if (!UW(arg, 4))
            return -LX_EFAULT;
        *(int32_t *)arg = n->size > f->pos ? (int32_t)(n->size - f->pos) : 0;
        return 0;
    }
    return -LX_ENOTTY;
}

static const struct lx_file_ops file_ops = {
    .read = vf_read, .write = vf_write, .pread = vf_pread, .pwrite = vf_pwrite,
    .poll = vf_poll, .close = vf_close, .stat = vf_stat, .seek = vf_seek, .ioctl = vf_ioctl,
};
static const struct lx_file_ops dir_ops = {
    .poll = vf_poll, .close = vf_close, .stat = vf_stat, .seek = vf_seek, .ioctl = vf_ioctl,
};

int vfs_is_file(struct lx_file *f)
{
    return f->kind == LX_F_FILE;
}

long vfs_file_pread(struct lx_file *f, void *buf, uint32_t n, uint64_t off)
{
    return read_inode(f->priv, buf, n, off);
}

static struct lx_file *open_inode(struct inode *n, uint32_t flags)
{
    struct lx_file *f = file_new(is_dir(n) ? &dir_ops : &file_ops, is_dir(n) ? LX_F_DIR : LX_F_FILE, n,
                                 flags & ~(uint32_t)(LX_O_CREAT | LX_O_EXCL | LX_O_TRUNC | LX_O_CLOEXEC));
    if (f)
        n->refs++;
    return f;
}

long vfs_open(int dirfd, const char *path, uint32_t flags, uint32_t mode, struct lx_file **out)
{
    struct lx_file *dev;
    if (path[0] == '/' && lx_open_dev(path, flags, &dev)) {
        if (!dev)
            return strncmp(path, "/dev/", 5) || !strcmp(path, "/dev/tty") ? -LX_ENXIO : -LX_ENOENT;
        *out = dev;
        return 0;
    }
    struct inode *parent, *n;
    const char *leaf;
    size_t leaf_len;
    int follow = !(flags & LX_O_NOFOLLOW);
    long r = resolve(dirfd, path, follow, &n, &parent, &leaf, &leaf_len, 0);
    if (r)
        return r;
    uint32_t acc = flags & LX_O_ACCMODE;
    if (!n) {
        if (!(flags & LX_O_CREAT))
            return -LX_ENOENT;
        if (parent->mnt->readonly)
            return -LX_EROFS;
        n = inode_new(parent->mnt, LX_S_IFREG | (mode & 07777 & ~umask_v));
        if (!n)
            return -LX_ENOMEM;
        if (dir_add(parent, leaf, leaf_len, n)) {
            free(n);
            return -LX_ENOMEM;
        }
        touch(parent);
    } else {
        if ((flags & LX_O_CREAT) && (flags & LX_O_EXCL))
            return -LX_EEXIST;
        if (is_lnk(n))
            return -LX_ELOOP; /* O_NOFOLLOW on a link */
        if ((flags & LX_O_DIRECTORY) && !is_dir(n))
            return -LX_ENOTDIR;
        if (is_dir(n) && acc != LX_O_RDONLY)
            return -LX_EISDIR;
        if (acc != LX_O_RDONLY && n->mnt->readonly)
            return -LX_EROFS;
        if ((flags & LX_O_TRUNC) && acc != LX_O_RDONLY && is_reg(n)) {
            r = truncate_inode(n, 0);
            if (r)
                return r;
        }
    }
    struct lx_file *f = open_inode(n, flags);
    if (!f)
        return -LX_ENOMEM;
    *out = f;
    return 0;
}

static long open_common(int dirfd, long up, long flags, long mode)
{
    const char *path;
    long r = user_path(up, &path);
    if (r)
        return r;
    struct lx_file *f;
    r = vfs_open(dirfd, path, (uint32_t)flags, (uint32_t)mode, &f);
    if (r)
        return r;
    int fd = fd_install(f, 0, flags & LX_O_CLOEXEC);
    if (fd < 0)
        file_put(f);
    return fd;
}

long sys_open(long path, long flags, long mode, long d, long e, long f)
{
    (void)d, (void)e, (void)f;
    return open_common(LX_AT_FDCWD, path, flags, mode);
}

long sys_openat(long dirfd, long path, long flags, long mode, long e, long f)
{
    (void)e, (void)f;
    return open_common((int)dirfd, path, flags, mode);
}

long sys_creat(long path, long mode, long c, long d, long e, long f)
{
    (void)c, (void)d, (void)e, (void)f;
    return open_common(LX_AT_FDCWD, path, LX_O_CREAT | LX_O_WRONLY | LX_O_TRUNC, mode);
}

/* ---- stat family ---- */
int lx_dev_stat(const char *path, struct lx_stat64 *st);

static long stat_path(int dirfd, long up, int follow, int empty_ok, struct lx_stat64 *st)
{
    const char *path;
    long r = user_path(up, &path);
    if (r)
        return r;
    if (!*path) {
        if (!empty_ok)
            return -LX_ENOENT;
        if (dirfd == LX_AT_FDCWD) {
            fill_stat(cwd, st);
            return 0;
        }
        struct lx_file *f = fd_get(dirfd);
        if (!f)
            return -LX_EBADF;
        return f->ops->stat ? f->ops->stat(f, st) : -LX_EINVAL;
    }
    if (lx_dev_stat(path, st))
        return 0;
    struct inode *n = 0;
    r = resolve(dirfd, path, follow, &n, 0, 0, 0, 0);
    if (r)
        return r;
    if (!n)
        return -LX_ENOENT;
    fill_stat(n, st);
    return 0;
}

long sys_stat64(long path, long st, long c, long d, long e, long f)
{
    (void)c, (void)d, (void)e, (void)f;
    if (!UW(st, sizeof(struct lx_stat64)))
        return -LX_EFAULT;
    return stat_path(LX_AT_FDCWD, path, 1, 0, (struct lx_stat64 *)st);
}

long sys_lstat64(long path, long st, long c, long d, long e, long f)
{
    (void)c, (void)d, (void)e, (void)f;
    if (!UW(st, sizeof(struct lx_stat64)))
        return -LX_EFAULT;
    return stat_path(LX_AT_FDCWD, path, 0, 0, (struct lx_stat64 *)st);
}

long sys_fstatat64(long dirfd, long path, long st, long flags, long e, long f)
{
    (void)e, (void)f;
    if (!UW(st, sizeof(struct lx_stat64)))
        return -LX_EFAULT;
    return stat_path((int)dirfd, path, !(flags & LX_AT_SYMLINK_NOFOLLOW), (flags & LX_AT_EMPTY_PATH) != 0,
                     (struct lx_stat64 *)st);
}

long sys_statx(long dirfd, long path, long flags, long mask, long buf, long f)
{
    (void)mask, (void)f;
    if (!UW(buf, 256))
        return -LX_EFAULT;
    struct lx_stat64 st;
    long r = stat_path((int)dirfd, path, !(flags & LX_AT_SYMLINK_NOFOLLOW), (flags & LX_AT_EMPTY_PATH) != 0, &st);
    if (r)
        return r;
    uint8_t *x = (uint8_t *)buf;
    memset(x, 0, 256);
    uint32_t v32;
    uint16_t v16;
    uint64_t v64;
#define P32(off, v) (v32 = (uint32_t)(v), memcpy(x + (off), &v32, 4))
#define P64(off, v) (v64 = (uint64_t)(v), memcpy(x + (off), &v64, 8))
    P32(0, 0x7ff);           /* stx_mask: the basic stats */
    P32(4, st.st_blksize);
    P32(16, st.st_nlink);
    P32(20, st.st_uid);
    P32(24, st.st_gid);
    v16 = (uint16_t)st.st_mode;
    memcpy(x + 28, &v16, 2);
    P64(32, st.st_ino);
    P64(40, st.st_size);
    P64(48, st.st_blocks);
    P64(64, st.st_atime);
    P32(72, st.st_atime_nsec);
    P64(96, st.st_ctime);
    P32(104, st.st_ctime_nsec);
    P64(112, st.st_mtime);
    P32(120, st.st_mtime_nsec);
    P32(128, st.st_rdev >> 8);
    P32(132, st.st_rdev & 0xff);
    P32(136, st.st_dev >> 8);
    P32(140, st.st_dev & 0xff);
#undef P32
#undef P64
    return 0;
}

/* ---- directories ---- */
static long put_dirent(uint8_t *out, uint32_t room, uint64_t ino, uint64_t off, uint8_t type, const char *name)
{
    uint32_t nl = (uint32_t)strlen(name);
    uint32_t reclen = (19 + nl + 1 + 7) & ~7u;
    if (reclen > room)
        return 0;
    memset(out, 0, reclen);
    memcpy(out, &ino, 8);
    memcpy(out + 8, &off, 8);
    uint16_t rl = (uint16_t)reclen;
    memcpy(out + 16, &rl, 2);
    out[18] = type;
    memcpy(out + 19, name, nl);
    return reclen;
}

static uint8_t dtype(const struct inode *n)
{
    return is_dir(n) ? 4 : is_lnk(n) ? 10 : 8;
}

long sys_getdents64(long fd, long buf, long count, long d, long e, long f)
{
    (void)d, (void)e, (void)f;
    struct lx_file *fl = fd_get((int)fd);
    if (!fl)
        return -LX_EBADF;
    if (fl->kind != LX_F_DIR)
        return -LX_ENOTDIR;
    if (count < 0 || !UW(buf, count))
        return -LX_EFAULT;
    struct inode *dir = fl->priv;
    uint8_t *out = (uint8_t *)buf;
    uint32_t used = 0, idx = 0;
    long w;
    if (fl->dir_pos == 0) {
        w = put_dirent(out, (uint32_t)count, dir->ino, 1, 4, ".");
        if (!w)
            return -LX_EINVAL;
        used += (uint32_t)w;
        fl->dir_pos = 1;
    }
    if (fl->dir_pos == 1) {
        w = put_dirent(out + used, (uint32_t)count - used, dir->parent ? dir->parent->ino : dir->ino, 2, 4, "..");
        if (!w)
            return used ? (long)used : -LX_EINVAL;
        used += (uint32_t)w;
        fl->dir_pos = 2;
    }
    for (struct dentry *en = dir->children; en; en = en->next, idx++) {
        if (idx + 2 < fl->dir_pos)
            continue;
        w = put_dirent(out + used, (uint32_t)count - used, en->ino->ino, idx + 3, dtype(en->ino), en->name);
        if (!w)
            return used ? (long)used : -LX_EINVAL;
        used += (uint32_t)w;
        fl->dir_pos = idx + 3;
    }
    fl->pos = fl->dir_pos;
    return (long)used;
}

long sys_access(long path, long mode, long c, long d, long e, long f)
{
    (void)c, (void)d, (void)e, (void)f;
    return sys_faccessat(LX_AT_FDCWD, path, mode, 0, 0, 0);
}

long sys_faccessat(long dirfd, long path, long mode, long d, long e, long f)
{
    (void)d, (void)e, (void)f;
    return sys_faccessat2(dirfd, path, mode, 0, 0, 0);
}

long sys_faccessat2(long dirfd, long path, long mode, long flags, long e, long f)
{
    (void)e, (void)f;
    if (mode & ~7)
        return -LX_EINVAL;
    struct lx_stat64 st;
    long r = stat_path((int)dirfd, path, !(flags & LX_AT_SYMLINK_NOFOLLOW), (flags & LX_AT_EMPTY_PATH) != 0, &st);
    if (r)
        return r;
    if ((mode & 1) && !(st.st_mode & 0111) && (st.st_mode & LX_S_IFMT) != LX_S_IFDIR)
        return -LX_EACCES; /* root may execute only what has an x bit */
    if (mode & 2) {
        struct inode *n = 0;
        const char *p = (const char *)path;
        if (*p && resolve((int)dirfd, p, 1, &n, 0, 0, 0, 0) == 0 && n && n->mnt->readonly)
            return -LX_EROFS;
    }
    return 0;
}

static long readlink_common(int dirfd, long up, long buf, long size)
{
    if (size <= 0)
        return -LX_EINVAL;
    if (!UW(buf, size))
        return -LX_EFAULT;
    struct inode *n;
    long r = lookup(dirfd, up, 0, &n);
    if (r)
        return r;
    if (!is_lnk(n))
        return -LX_EINVAL;
    uint32_t len = (uint32_t)strlen(n->link);
    if (len > (uint32_t)size)
        len = (uint32_t)size;
    memcpy((void *)buf, n->link, len);
    return (long)len;
}

long sys_readlink(long path, long buf, long size, long d, long e, long f)
{
    (void)d, (void)e, (void)f;
    return readlink_common(LX_AT_FDCWD, path, buf, size);
}

long sys_readlinkat(long dirfd, long path, long buf, long size, long e, long f)
{
    (void)e, (void)f;
    return readlink_common((int)dirfd, path, buf, size);
}

static int path_of(struct inode *n, char *out, size_t cap)
{
    char tmp[PATH_MAX];
    size_t pos = sizeof tmp - 1;
    tmp[pos] = 0;
    while (n != root) {
        struct inode *p = n->parent;
        if (!p)
            return -LX_ENOENT;
        const char *nm = 0;
        for (struct dentry *e = p->children; e; e = e->next)
            if (e->ino == n)
                nm = e->name;
        if (!nm)
            return -LX_ENOENT; /* removed while it was the cwd */
        size_t l = strlen(nm);
        if (l + 1 > pos)
            return -LX_ENAMETOOLONG;
        pos -= l;
        memcpy(tmp + pos, nm, l);
        tmp[--pos] = '/';
        n = p;
    }
    if (pos == sizeof tmp - 1)
        tmp[--pos] = '/';
    size_t len = sizeof tmp - 1 - pos;
    if (len + 1 > cap)
        return -LX_ERANGE;
    memcpy(out, tmp + pos, len + 1);
    return (int)(len + 1);
}

long sys_getcwd(long buf, long size, long c, long d, long e, long f)
{
    (void)c, (void)d, (void)e, (void)f;
    if (size <= 0)
        return -LX_ERANGE;
    char tmp[PATH_MAX];
    int r = path_of(cwd, tmp, sizeof tmp);
    if (r < 0)
        return r;
    if (r > size)
        return -LX_ERANGE;
    if (!UW(buf, r))
        return -LX_EFAULT;
    memcpy((void *)buf, tmp, (size_t)r);
    return r;
}

long sys_chdir(long path, long b, long c, long d, long e, long f)
{
    (void)b, (void)c, (void)d, (void)e, (void)f;
    struct inode *n;
    long r;
    if ((uint32_t)path < LX_PROGRAM_BASE) { /* from vfs_init (lx.cwd) */
        n = 0;
        r = resolve(LX_AT_FDCWD, (const char *)path, 1, &n, 0, 0, 0, 0);
        if (!r && !n)
            r = -LX_ENOENT;
    } else {
        r = lookup(LX_AT_FDCWD, path, 1, &n);
    }
    if (r)
        return r;
    if (!is_dir(n))
        return -LX_ENOTDIR;
    cwd = n;
    return 0;
}

long sys_fchdir(long fd, long b, long c, long d, long e, long f)
{
    (void)b, (void)c, (void)d, (void)e, (void)f;
    struct lx_file *fl = fd_get((int)fd);
    if (!fl)
        return -LX_EBADF;
    if (fl->kind != LX_F_DIR)
        return -LX_ENOTDIR;
    cwd = fl->priv;
    return 0;
}

/* Resolves the parent of a path that names something to create or remove. */
static long parent_of(int dirfd, long up, struct inode **parent, const char **leaf, size_t *len,
                      struct inode **existing)
{
    const char *path;
    long r = user_path(up, &path);
    if (r)
        return r;
    r = resolve(dirfd, path, 0, existing, parent, leaf, len, 0);
    if (r)
        return r;
    if ((*len == 1 && (*leaf)[0] == '.') || (*len == 2 && (*leaf)[0] == '.' && (*leaf)[1] == '.'))
        return *existing ? -LX_EEXIST : -LX_EINVAL;
    return 0;
}

long sys_mkdirat(long dirfd, long path, long mode, long d, long e, long f)
{
    (void)d, (void)e, (void)f;
    struct inode *parent, *ex;
    const char *leaf;
    size_t len;
    long r = parent_of((int)dirfd, path, &parent, &leaf, &len, &ex);
    if (r)
        return r;
    if (ex)
        return -LX_EEXIST;
    if (parent->mnt->readonly)
        return -LX_EROFS;
    struct inode *n = inode_new(parent->mnt, LX_S_IFDIR | ((uint32_t)mode & 07777 & ~umask_v));
    if (!n)
        return -LX_ENOMEM;
    n->nlink = 2;
    if (dir_add(parent, leaf, len, n)) {
        free(n);
        return -LX_ENOMEM;
    }
    touch(parent);
    return 0;
}

long sys_mkdir(long path, long mode, long c, long d, long e, long f)
{
    (void)c, (void)d, (void)e, (void)f;
    return sys_mkdirat(LX_AT_FDCWD, path, mode, 0, 0, 0);
}

static long remove_entry(int dirfd, long path, int dir)
{
    struct inode *parent, *n;
    const char *leaf;
    size_t len;
    long r = parent_of(dirfd, path, &parent, &leaf, &len, &n);
    if (r)
        return r == -LX_EEXIST ? -LX_EINVAL : r;
    if (!n)
        return -LX_ENOENT;
    if (parent->mnt->readonly)
        return -LX_EROFS;
    struct dentry *e = dir_find(parent, leaf, len);
    if (!e)
        return -LX_ENOENT;
    if (dir) {
        if (!is_dir(n))
            return -LX_ENOTDIR;
        if (n->nchildren)
            return -LX_ENOTEMPTY;
        if (n == root || n == cwd || n->mnt->root == n)
            return -LX_EBUSY;
    } else if (is_dir(n)) {
        return -LX_EISDIR;
    }
    dir_remove(parent, e);
    touch(parent);
    n->nlink = 0;
    inode_release(n);
    return 0;
}

long sys_rmdir(long path, long b, long c, long d, long e, long f)
{
    (void)b, (void)c, (void)d, (void)e, (void)f;
    return remove_entry(LX_AT_FDCWD, path, 1);
}

long sys_unlink(long path, long b, long c, long d, long e, long f)
{
    (void)b, (void)c, (void)d, (void)e, (void)f;
    return remove_entry(LX_AT_FDCWD, path, 0);
}

long sys_unlinkat(long dirfd, long path, long flags, long d, long e, long f)
{
    (void)d, (void)e, (void)f;
    if (flags & ~LX_AT_REMOVEDIR)
        return -LX_EINVAL;
    return remove_entry((int)dirfd, path, (flags & LX_AT_REMOVEDIR) != 0);
}

static int is_ancestor(struct inode *a, struct inode *n)
{
    for (; n != root; n = n->parent)
        if (n == a)
            return 1;
    return a == root;
}

long sys_renameat2(long odir, long opath, long ndir, long npath, long flags, long f)
{
    (void)f;
    if (flags & ~1) /* RENAME_NOREPLACE only */
        return -LX_EINVAL;
    struct inode *op, *on, *np, *nn;
    const char *ol, *nl;
    size_t olen, nlen;
    long r = parent_of((int)odir, opath, &op, &ol, &olen, &on);
    if (r)
        return r == -LX_EEXIST ? -LX_EBUSY : r;
    if (!on)
        return -LX_ENOENT;
    r = parent_of((int)ndir, npath, &np, &nl, &nlen, &nn);
    if (r)
        return r == -LX_EEXIST ? -LX_EBUSY : r;
    if (op->mnt != np->mnt || on->mnt != np->mnt || (on->mnt->root == on))
        return on->mnt->root == on ? -LX_EBUSY : -LX_EXDEV;
    if (op->mnt->readonly)
        return -LX_EROFS;
    if (on == nn)
        return 0;
    if (nn && (flags & 1))
        return -LX_EEXIST;
    if (is_dir(on) && is_ancestor(on, np))
        return -LX_EINVAL;
    if (nn) {
        if (is_dir(on) && !is_dir(nn))
            return -LX_ENOTDIR;
        if (!is_dir(on) && is_dir(nn))
            return -LX_EISDIR;
        if (is_dir(nn) && nn->nchildren)
            return -LX_ENOTEMPTY;
        struct dentry *te = dir_find(np, nl, nlen);
        dir_remove(np, te);
        nn->nlink = 0;
        inode_release(nn);
    }
    struct dentry *e = dir_find(op, ol, olen);
    if (!e)
        return -LX_ENOENT;
    char name[NAME_MAX + 1];
    memcpy(name, nl, nlen);
    name[nlen] = 0;
    dir_remove(op, e);
    if (dir_add(np, name, nlen, on))
        return -LX_ENOMEM;
    touch(op);
    touch(np);
    return 0;
}

long sys_renameat(long odir, long opath, long ndir, long npath, long e, long f)
{
    (void)e, (void)f;
    return sys_renameat2(odir, opath, ndir, npath, 0, 0);
}

long sys_rename(long opath, long npath, long c, long d, long e, long f)
{
    (void)c, (void)d, (void)e, (void)f;
    return sys_renameat2(LX_AT_FDCWD, opath, LX_AT_FDCWD, npath, 0, 0);
}

long sys_symlinkat(long target, long dirfd, long path, long d, long e, long f)
{
    (void)d, (void)e, (void)f;
    long tl = lx_user_strlen((const char *)target, PATH_MAX - 1);
    if (tl < 0)
        return tl == -LX_ENAMETOOLONG ? tl : -LX_EFAULT;
    if (!tl)
        return -LX_ENOENT;
    struct inode *parent, *ex;
    const char *leaf;
    size_t len;
    long r = parent_of((int)dirfd, path, &parent, &leaf, &len, &ex);
    if (r)
        return r;
    if (ex)
        return -LX_EEXIST;
    if (parent->mnt->readonly)
        return -LX_EROFS;
    struct inode *n = inode_new(parent->mnt, LX_S_IFLNK | 0777);
    char *t = malloc((size_t)tl + 1);
    if (!n || !t) {
        free(n);
        free(t);
        return -LX_ENOMEM;
    }
    memcpy(t, (const char *)target, (size_t)tl + 1);
    n->link = t;
    if (dir_add(parent, leaf, len, n))
        return -LX_ENOMEM;
    touch(parent);
    return 0;
}

long sys_symlink(long target, long path, long c, long d, long e, long f)
{
    (void)c, (void)d, (void)e, (void)f;
    return sys_symlinkat(target, LX_AT_FDCWD, path, 0, 0, 0);
}

long sys_link(long a, long b, long c, long d, long e, long f)
{
    (void)a, (void)b, (void)c, (void)d, (void)e, (void)f;
    return -LX_EPERM;
}

long sys_linkat(long a, long b, long c, long d, long e, long f)
{
    (void)a, (void)b, (void)c, (void)d, (void)e, (void)f;
    return -LX_EPERM;
}

long sys_ftruncate64(long fd, long lo, long hi, long d, long e, long f)
{
    (void)d, (void)e, (void)f;
    struct lx_file *fl = fd_get((int)fd);
    if (!fl)
        return -LX_EBADF;
    if (fl->kind != LX_F_FILE || (fl->flags & LX_O_ACCMODE) == LX_O_RDONLY)
        return -LX_EINVAL;
    int64_t len = (int64_t)(((uint64_t)(uint32_t)hi << 32) | (uint32_t)lo);
    if (len < 0)
        return -LX_EINVAL;
    return truncate_inode(fl->priv, (uint64_t)len);
}

long sys_ftruncate(long fd, long len, long c, long d, long e, long f)
{
    (void)c;
    return sys_ftruncate64(fd, len, len < 0 ? -1 : 0, d, e, f);
}

long sys_truncate(long path, long len, long c, long d, long e, long f)
{
    (void)c;
    return sys_truncate64(path, len, len < 0 ? -1 : 0, d, e, f);
}

long sys_truncate64(long path, long lo, long hi, long d, long e, long f)
{
    (void)d, (void)e, (void)f;
    struct inode *n;
    long r = lookup(LX_AT_FDCWD, path, 1, &n);
    if (r)
        return r;
    int64_t len = (int64_t)(((uint64_t)(uint32_t)hi << 32) | (uint32_t)lo);
    if (len < 0)
        return -LX_EINVAL;
    return truncate_inode(n, (uint64_t)len);
}

long sys_fsync(long fd, long b, long c, long d, long e, long f)
{
    (void)b, (void)c, (void)d, (void)e, (void)f;
    struct lx_file *fl = fd_get((int)fd);
    if (!fl)
        return -LX_EBADF;
    if (fl->kind != LX_F_FILE && fl->kind != LX_F_DIR)
        return 0;
    return sync_mount(((struct inode *)fl->priv)->mnt);
}

long sys_sync(long a, long b, long c, long d, long e, long f)
{
    (void)a, (void)b, (void)c, (void)d, (void)e, (void)f;
    vfs_sync();
    return 0;
}

long sys_umask(long m, long b, long c, long d, long e, long f)
{
    (void)b, (void)c, (void)d, (void)e, (void)f;
    uint32_t old = umask_v;
    umask_v = (uint32_t)m & 0777;
    return (long)old;
}

static long set_mode(struct inode *n, uint32_t mode)
{
    if (n->mnt->readonly)
        return -LX_EROFS;
    n->mode = (n->mode & LX_S_IFMT) | (mode & 07777);
    n->mnt->dirty = 1;
    return 0;
}

long sys_chmod(long path, long mode, long c, long d, long e, long f)
{
    (void)c, (void)d, (void)e, (void)f;
    struct inode *n;
    long r = lookup(LX_AT_FDCWD, path, 1, &n);
    return r ? r : set_mode(n, (uint32_t)mode);
}

long sys_fchmodat(long dirfd, long path, long mode, long d, long e, long f)
{
    (void)d, (void)e, (void)f;
    struct inode *n;
    long r = lookup((int)dirfd, path, 1, &n);
    return r ? r : set_mode(n, (uint32_t)mode);
}

long sys_fchmod(long fd, long mode, long c, long d, long e, long f)
{
    (void)c, (void)d, (void)e, (void)f;
    struct lx_file *fl = fd_get((int)fd);
    if (!fl)
        return -LX_EBADF;
    if (fl->kind != LX_F_FILE && fl->kind != LX_F_DIR)
        return 0;
    return set_mode(fl->priv, (uint32_t)mode);
}

/* Ownership: the program is root and alone; changes are accepted and not recorded. */
long sys_chown(long path, long u, long g, long d, long e, long f)
{
    (void)u, (void)g, (void)d, (void)e, (void)f;
    struct inode *n;
    return lookup(LX_AT_FDCWD, path, 1, &n);
}

long sys_fchown(long fd, long u, long g, long d, long e, long f)
{
    (void)u, (void)g, (void)d, (void)e, (void)f;
    return fd_get((int)fd) ? 0 : -LX_EBADF;
}

long sys_fchownat(long dirfd, long path, long u, long g, long flags, long f)
{
    (void)u, (void)g, (void)f;
    struct inode *n;
    if (flags & LX_AT_EMPTY_PATH)
        return 0;
    return lookup((int)dirfd, path, !(flags & LX_AT_SYMLINK_NOFOLLOW), &n);
}

#define UTIME_NOW ((1l << 30) - 1l)
#define UTIME_OMIT ((1l << 30) - 2l)

static long set_times(int dirfd, long path, int64_t sec, int64_t nsec, int omit, int follow)
{
    struct inode *n;
    long r;
    if (!path) {
        struct lx_file *fl = fd_get(dirfd);
        if (!fl)
            return -LX_EBADF;
        if (fl->kind != LX_F_FILE && fl->kind != LX_F_DIR)
            return 0;
        n = fl->priv;
    } else {
        r = lookup(dirfd, path, follow, &n);
        if (r)
            return r;
    }
    if (omit)
        return 0;
    if (n->mnt->readonly)
        return -LX_EROFS;
    n->mtime = sec;
    n->mtime_ns = (uint32_t)nsec;
    n->mnt->dirty = 1;
    return 0;
}

static long utimens_common(long dirfd, long path, long times, long flags, int wide)
{
    int64_t sec, nsec;
    int omit = 0;
    uint64_t now = lx_realtime_ns();
    if (!times) {
        sec = (int64_t)(now / 1000000000ull);
        nsec = (int64_t)(now % 1000000000ull);
    } else {
        if (!UR(times, wide ? 32 : 16))
            return -LX_EFAULT;
        /* the second timespec is the modification time (the one recorded) */
        sec = wide ? ((const int64_t *)times)[2] : ((const int32_t *)times)[2];
        nsec = wide ? ((const int64_t *)times)[3] : ((const int32_t *)times)[3];
        if (nsec == UTIME_NOW) {
            sec = (int64_t)(now / 1000000000ull);
            nsec = (int64_t)(now % 1000000000ull);
        } else if (nsec == UTIME_OMIT) {
            omit = 1;
        } else if (nsec < 0 || nsec >= 1000000000) {
            return -LX_EINVAL;
        }
    }
    return set_times((int)dirfd, path, sec, nsec, omit, !(flags & LX_AT_SYMLINK_NOFOLLOW));
}

long sys_utimensat(long dirfd, long path, long times, long flags, long e, long f)
{
    (void)e, (void)f;
    return utimens_common(dirfd, path, times, flags, 0);
}

long sys_utimensat64(long dirfd, long path, long times, long flags, long e, long f)
{
    (void)e, (void)f;
    return utimens_common(dirfd, path, times, flags, 1);
}

static long fill_statfs(struct mount *m, long buf, long size)
{
    if (size != 84 && size != 88)
        return -LX_EINVAL;
    if (!UW(buf, size))
        return -LX_EFAULT;
    uint32_t *s = (uint32_t *)buf;
    memset(s, 0, (size_t)size);
    uint64_t total = m->has_disk ? m->nblocks : m->ram_len, used = 0;
    if (m->has_disk)
        for (uint64_t i = 0; i < m->nblocks - m->alloc_lo; i++)
            used += (m->bitmap[i / 8] >> (i % 8)) & 1;
    uint64_t avail = m->has_disk ? (m->nblocks - m->alloc_lo) - used : 0;
    s[0] = 0x444e4c58; /* f_type */
    s[1] = BLK;        /* f_bsize */
    memcpy(&s[2], &total, 8);
    memcpy(&s[4], &avail, 8);
    memcpy(&s[6], &avail, 8);
    uint64_t files = next_ino, ffree = 1u << 20;
    memcpy(&s[8], &files, 8);
    memcpy(&s[10], &ffree, 8);
    s[12] = m->dev;
    s[14] = NAME_MAX;
    s[15] = BLK;
    s[16] = m->readonly ? 1 : 0;
    return 0;
}

long sys_statfs64(long path, long size, long buf, long d, long e, long f)
{
    (void)d, (void)e, (void)f;
    struct inode *n;
    long r = lookup(LX_AT_FDCWD, path, 1, &n);
    return r ? r : fill_statfs(n->mnt, buf, size);
}

long sys_fstatfs64(long fd, long size, long buf, long d, long e, long f)
{
    (void)d, (void)e, (void)f;
    struct lx_file *fl = fd_get((int)fd);
    if (!fl)
        return -LX_EBADF;
    if (fl->kind != LX_F_FILE && fl->kind != LX_F_DIR)
        return fill_statfs(root->mnt, buf, size);
    return fill_statfs(((struct inode *)fl->priv)->mnt, buf, size);
}
