/* fs/fs.h: a read-only DNLFS file system on a virtual disk (guestos/fs/fs.c).
 *
 * DNLFS is what `denali disk pack DIR IMAGE` writes (docs/disk-format.md): a
 * superblock, a sorted directory of paths, and each file contiguous. fs_mount checks
 * the superblock, the directory and every entry (CRC-32s, bounds, order) and refuses
 * an image that is corrupt or truncated: nothing read from a disk is trusted.
 * Paths are relative and '/'-separated ("docs/index.html"); a leading '/' is ignored.
 * Threads may share a mounted fs_t; reads block only the calling thread.
 *
 * Errors are negative FS_E* values; fs_strerror() names them. */
#ifndef GUESTOS_FS_FS_H
#define GUESTOS_FS_FS_H
#include <stddef.h>
#include <stdint.h>
#include <fs/disk.h>

#define FS_OK 0
#define FS_EIO (-1)       /* the disk failed (DENALI_IO, FAULT, ...) */
#define FS_ENOENT (-2)    /* no such file */
#define FS_EINVAL (-3)    /* a bad argument (path too long, index out of range) */
#define FS_ENOMEM (-4)    /* malloc failed */
#define FS_ECORRUPT (-5)  /* not a DNLFS image, or a damaged one */
#define FS_ENODEV (-6)    /* no disk of that name */

#define FS_PATH_MAX 95

typedef struct fs fs_t;

typedef struct fs_stat {
    char path[FS_PATH_MAX + 1];
    uint64_t size;
    uint32_t crc32;   /* of the contents, as zlib.crc32 */
    uint32_t mode;    /* permission bits the host file had (informational) */
    uint64_t mtime;   /* seconds since 1970 (informational) */
} fs_stat_t;

typedef struct fs_file {
    fs_t *fs;
    uint64_t first_block;
    uint64_t size;
    uint32_t crc32;
    uint32_t index;   /* position in the directory */
} fs_file_t;

/* Mounts the DNLFS image on the disk called disk_name; *out on success. */
int fs_mount(const char *disk_name, fs_t **out);
void fs_unmount(fs_t *fs);
const char *fs_label(const fs_t *fs);
/* Number of files, and the i-th (in path order). */
uint32_t fs_count(const fs_t *fs);
int fs_stat_index(const fs_t *fs, uint32_t i, fs_stat_t *st);
/* Calls fn for every file in path order; stops early (returning its value) when fn
 * returns non-zero. */
int fs_list(const fs_t *fs, int (*fn)(const fs_stat_t *st, void *arg), void *arg);

int fs_open(fs_t *fs, const char *path, fs_file_t *f);
static inline uint64_t fs_size(const fs_file_t *f) { return f->size; }
/* Reads up to len bytes at offset off: the number read (0 at or past the end), or a
 * negative FS_E* code. */
int64_t fs_read(const fs_file_t *f, uint64_t off, void *buf, size_t len);

/* CRC-32 (IEEE 802.3, as zlib.crc32): start with crc = 0, feed pieces in order. */
uint32_t fs_crc32(uint32_t crc, const void *buf, size_t len);
const char *fs_strerror(int err);

#endif
