/* fs.c: read-only DNLFS on a virtual disk (see fs/fs.h and docs/disk-format.md).
 *
 * Mounting reads the superblock and the whole directory into memory and checks them
 * completely, so later lookups and reads need no checks beyond "offset < size". */
#include <fs/fs.h>
#include <ilwaco.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK DENALI_DISK_BLOCK_SIZE
#define BLOCK_SHIFT 12
#define MAX_FILES 65536u
#define ENTRY_SIZE 128u

_Static_assert(BLOCK == 1 << BLOCK_SHIFT, "block size");

/* The on-disk superblock (little-endian, like the CPU). */
struct dnlfs_super {
    uint8_t magic[8];
    uint32_t version;
    uint32_t block_size;
    uint64_t total_blocks;
    uint64_t dir_start;
    uint32_t dir_blocks;
    uint32_t file_count;
    uint64_t data_start;
    uint64_t data_blocks;
    uint32_t dir_crc32;
    uint32_t flags;
    char label[32];
    uint8_t uuid[16];
    uint32_t crc32; /* of the 112 bytes before it */
};
_Static_assert(__builtin_offsetof(struct dnlfs_super, data_start) == 40, "superblock layout");
_Static_assert(__builtin_offsetof(struct dnlfs_super, label) == 64, "superblock layout");
_Static_assert(__builtin_offsetof(struct dnlfs_super, crc32) == 112, "superblock layout");

struct dnlfs_entry {
    char path[96];
    uint64_t first_block;
    uint64_t size;
    uint32_t crc32;
    uint32_t mode;
    uint64_t mtime;
};
_Static_assert(sizeof(struct dnlfs_entry) == ENTRY_SIZE, "entry layout");
_Static_assert(__builtin_offsetof(struct dnlfs_entry, crc32) == 112, "entry layout");

struct fs {
    disk_t disk;
    uint64_t data_start;
    uint64_t data_end;
    uint32_t count;
    char label[32];
    struct dnlfs_entry *dir;
    uint8_t *bounce; /* one block, for reads that do not cover whole blocks */
    mutex_t lock;    /* guards bounce */
};

static const uint8_t MAGIC[8] = {'D', 'E', 'N', 'A', 'L', 'I', 'F', 'S'};

uint32_t fs_crc32(uint32_t crc, const void *buf, size_t len)
{
    static uint32_t table[256];
    static int ready;
    if (!ready) {
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++)
                c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            table[i] = c;
        }
        ready = 1;
    }
    const uint8_t *p = buf;
    crc = ~crc;
    while (len--)
        crc = table[(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

const char *fs_strerror(int err)
{
    switch (err) {
    case FS_OK: return "ok";
    case FS_EIO: return "disk I/O error";
    case FS_ENOENT: return "no such file";
    case FS_EINVAL: return "invalid argument";
    case FS_ENOMEM: return "out of memory";
    case FS_ECORRUPT: return "not a DNLFS image, or a corrupt one";
    case FS_ENODEV: return "no such disk";
    default: return "unknown error";
    }
}

/* A stored path: non-empty, no leading '/', no empty, "." or ".." component. */
static int path_ok(const char *p)
{
    if (*p == '\0')
        return 0;
    while (*p) {
        const char *end = strchr(p, '/');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        if (n == 0 || (n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.'))
            return 0;
        if (!end)
            break;
        p = end + 1;
        if (*p == '\0')
            return 0; /* trailing '/' */
    }
    return 1;
}

/* Blocks needed for size bytes, without overflow. */
static uint64_t blocks_for(uint64_t size)
{
    return (size >> BLOCK_SHIFT) + ((size & (BLOCK - 1)) != 0);
}

static int check_directory(struct fs *fs)
{
    uint64_t next = fs->data_start;
    const char *prev = NULL;
    for (uint32_t i = 0; i < fs->count; i++) {
        struct dnlfs_entry *e = &fs->dir[i];
        size_t n = strnlen(e->path, sizeof e->path);
        if (n == sizeof e->path)
            return FS_ECORRUPT; /* unterminated */
        for (size_t k = n; k < sizeof e->path; k++)
            if (e->path[k])
                return FS_ECORRUPT;
        if (!path_ok(e->path) || (prev && strcmp(prev, e->path) >= 0))
            return FS_ECORRUPT;
        prev = e->path;
        if (e->size == 0) {
            if (e->first_block != 0)
                return FS_ECORRUPT;
            continue;
        }
        if (e->first_block != next || next >= fs->data_end
            || blocks_for(e->size) > fs->data_end - next)
            return FS_ECORRUPT;
        next += blocks_for(e->size);
    }
    return next == fs->data_end ? FS_OK : FS_ECORRUPT;
}

static int read_super(struct fs *fs, struct dnlfs_super *sb)
{
    if (disk_read(&fs->disk, 0, 1, fs->bounce) != DENALI_OK)
        return FS_EIO;
    memcpy(sb, fs->bounce, sizeof *sb);
    if (memcmp(sb->magic, MAGIC, sizeof MAGIC) != 0 || sb->version != 1)
        return FS_ECORRUPT;
    if (fs_crc32(0, fs->bounce, __builtin_offsetof(struct dnlfs_super, crc32)) != sb->crc32)
        return FS_ECORRUPT;
    uint32_t want_dir = (uint32_t)(((uint64_t)sb->file_count * ENTRY_SIZE + BLOCK - 1) >> BLOCK_SHIFT);
    if (want_dir == 0)
        want_dir = 1;
    if (sb->block_size != BLOCK || sb->dir_start != 1 || sb->file_count > MAX_FILES
        || sb->dir_blocks != want_dir || sb->data_start != 1 + (uint64_t)want_dir
        || sb->total_blocks != fs->disk.blocks || sb->data_start > sb->total_blocks
        || sb->data_blocks > sb->total_blocks - sb->data_start)
        return FS_ECORRUPT;
    if (sb->label[sizeof sb->label - 1] != '\0')
        return FS_ECORRUPT;
    return FS_OK;
}

int fs_mount(const char *disk_name, fs_t **out)
{
    struct fs *fs = calloc(1, sizeof *fs);
    if (!fs)
        return FS_ENOMEM;
    int err;
    int r = disk_open(disk_name, &fs->disk);
    if (r != DENALI_OK) {
        err = r == DENALI_NODEV ? FS_ENODEV : FS_EINVAL;
        goto fail;
    }
    mutex_init(&fs->lock);
    fs->bounce = malloc(BLOCK);
    if (!fs->bounce) {
        err = FS_ENOMEM;
        goto fail;
    }
    struct dnlfs_super sb;
    err = read_super(fs, &sb);
    if (err != FS_OK)
        goto fail;
    fs->count = sb.file_count;
    fs->data_start = sb.data_start;
    fs->data_end = sb.data_start + sb.data_blocks;
    memcpy(fs->label, sb.label, sizeof fs->label);
    fs->dir = malloc((size_t)sb.dir_blocks * BLOCK);
    if (!fs->dir) {
        err = FS_ENOMEM;
        goto fail;
    }
    if (disk_read(&fs->disk, 1, sb.dir_blocks, fs->dir) != DENALI_OK) {
        err = FS_EIO;
        goto fail;
    }
    if (fs_crc32(0, fs->dir, (size_t)fs->count * ENTRY_SIZE) != sb.dir_crc32) {
        err = FS_ECORRUPT;
        goto fail;
    }
    err = check_directory(fs);
    if (err != FS_OK)
        goto fail;
    *out = fs;
    return FS_OK;
fail:
    fs_unmount(fs);
    return err;
}

void fs_unmount(fs_t *fs)
{
    if (!fs)
        return;
    free(fs->dir);
    free(fs->bounce);
    free(fs);
}

const char *fs_label(const fs_t *fs)
{
    return fs->label;
}

uint32_t fs_count(const fs_t *fs)
{
    return fs->count;
}

int fs_stat_index(const fs_t *fs, uint32_t i, fs_stat_t *st)
{
    if (i >= fs->count)
        return FS_EINVAL;
    const struct dnlfs_entry *e = &fs->dir[i];
    memcpy(st->path, e->path, sizeof st->path);
    st->size = e->size;
    st->crc32 = e->crc32;
    st->mode = e->mode;
    st->mtime = e->mtime;
    return FS_OK;
}

int fs_list(const fs_t *fs, int (*fn)(const fs_stat_t *st, void *arg), void *arg)
{
    fs_stat_t st;
    for (uint32_t i = 0; i < fs->count; i++) {
        fs_stat_index(fs, i, &st);
        int r = fn(&st, arg);
        if (r)
            return r;
    }
    return 0;
}

int fs_open(fs_t *fs, const char *path, fs_file_t *f)
{
    while (*path == '/')
        path++;
    if (strnlen(path, FS_PATH_MAX + 1) > FS_PATH_MAX)
        return FS_EINVAL;
    uint32_t lo = 0, hi = fs->count;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        int c = strcmp(path, fs->dir[mid].path);
        if (c == 0) {
            f->fs = fs;
            f->first_block = fs->dir[mid].first_block;
            f->size = fs->dir[mid].size;
            f->crc32 = fs->dir[mid].crc32;
            f->index = mid;
            return FS_OK;
        }
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return FS_ENOENT;
}

int64_t fs_read(const fs_file_t *f, uint64_t off, void *buf, size_t len)
{
    struct fs *fs = f->fs;
    if (off >= f->size)
        return 0;
    if (len > f->size - off)
        len = (size_t)(f->size - off);
    uint8_t *out = buf;
    size_t done = 0;
    while (done < len) {
        uint64_t pos = off + done;
        uint64_t block = f->first_block + (pos >> BLOCK_SHIFT);
        size_t in = (size_t)(pos & (BLOCK - 1));
        size_t want = len - done;
        if (in == 0 && want >= BLOCK) {
            uint32_t n = (uint32_t)(want >> BLOCK_SHIFT); /* size_t is 32 bits: fits */
            if (disk_read(&fs->disk, block, n, out + done) != DENALI_OK)
                return FS_EIO;
            done += (size_t)n << BLOCK_SHIFT;
            continue;
        }
        size_t n = BLOCK - in < want ? BLOCK - in : want;
        mutex_lock(&fs->lock);
        int r = disk_read(&fs->disk, block, 1, fs->bounce);
        if (r == DENALI_OK)
            memcpy(out + done, fs->bounce + in, n);
        mutex_unlock(&fs->lock);
        if (r != DENALI_OK)
            return FS_EIO;
        done += n;
    }
    return (int64_t)done;
}
