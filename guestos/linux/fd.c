/* fd.c: the file-descriptor table and the calls that work on any descriptor:
 * read/write and their vector and positioned forms, close, dup*, fcntl, ioctl, lseek,
 * poll/select, fstat; the console (fds 0-2 at boot), the character devices under /dev,
 * and pipes within the program.
 *
 * The console: fd 0 reads console input (CONSOLE_READ; a VM whose host opened no input
 * reads end of file), fd 1 writes the output stream, fd 2 the error stream. None of
 * them is a terminal: TCGETS and TIOCGWINSZ answer ENOTTY, fstat says S_IFIFO. A
 * read that finds nothing waits for Irq.CONSOLE with the VM idle. */
#include <string.h>
#include <stdlib.h>
#include "lx.h"

static struct lx_file *fds[LX_FD_MAX];
static uint8_t cloexec[LX_FD_MAX];

struct lx_file *file_new(const struct lx_file_ops *ops, int kind, void *priv, uint32_t flags)
{
    struct lx_file *f = calloc(1, sizeof *f);
    if (!f)
        return 0;
    f->ops = ops;
    f->kind = kind;
    f->priv = priv;
    f->flags = flags;
    f->refs = 1;
    return f;
}

void file_put(struct lx_file *f)
{
    if (--f->refs)
        return;
    if (f->ops->close)
        f->ops->close(f);
    free(f);
}

struct lx_file *fd_get(int fd)
{
    if (fd < 0 || fd >= LX_FD_MAX)
        return 0;
    return fds[fd];
}

int fd_install(struct lx_file *f, int min, int cx)
{
    for (int i = min < 0 ? 0 : min; i < LX_FD_MAX; i++) {
        if (!fds[i]) {
            fds[i] = f;
            cloexec[i] = (uint8_t)(cx != 0);
            return i;
        }
    }
    return -LX_EMFILE;
}

/* ---- waiting ---- */
uint64_t lx_alarm_deadline(void);
void lx_check_alarm(void);

void lx_wait_any(uint64_t deadline_ns)
{
    uint64_t al = lx_alarm_deadline();
    if (al && (!deadline_ns || al < deadline_ns))
        deadline_ns = al;
    irq_wait(DENALI_IRQ_CONSOLE | DENALI_IRQ_NET_RX, deadline_ns);
    thread_yield(); /* let the network thread take in what woke us first */
    lx_check_alarm();
}

/* ---- the console ---- */
static uint8_t in_buf[4096];
static uint32_t in_len, in_off;
static int in_eof;

/* Pulls waiting input into in_buf; returns 1 when data or EOF is there. */
int lx_console_ready(void)
{
    if (in_off < in_len || in_eof)
        return 1;
    struct denali_hc_console_read r = {(uint32_t)in_buf, sizeof in_buf, 0, 0};
    int rc = denali_hc_console_read(&r);
    if (rc == DENALI_NODEV) {
        in_eof = 1;
        return 1;
    }
    if (rc != DENALI_OK)
        return 0;
    in_off = 0;
    in_len = r.got;
    if (r.eof)
        in_eof = 1;
    return 1;
}

static long con_read(struct lx_file *f, void *buf, uint32_t n)
{
    while (!lx_console_ready()) {
        if (f->flags & LX_O_NONBLOCK)
            return -LX_EAGAIN;
        if (lx_sig_pending)
            return -LX_EINTR;
        lx_wait_any(0);
    }
    uint32_t k = in_len - in_off;
    if (!k)
        return 0; /* end of input */
    if (k > n)
        k = n;
    lx_memcpy(buf, in_buf + in_off, k);
    in_off += k;
    return (long)k;
}

static long con_write(struct lx_file *f, const void *buf, uint32_t n)
{
    if ((uint32_t)(uintptr_t)f->priv == 2)
        lx_write_err(buf, n);
    else
        lx_write_out(buf, n);
    return (long)n;
}

static int con_poll(struct lx_file *f)
{
    if ((uint32_t)(uintptr_t)f->priv == 0)
        return lx_console_ready() ? LX_POLLIN : 0;
    return LX_POLLOUT;
}

static long stat_fill(void *st, uint32_t mode, uint64_t rdev, uint64_t ino)
{
    struct lx_stat64 *s = st;
    memset(s, 0, sizeof *s);
    s->st_mode = mode;
    s->st_nlink = 1;
    s->st_rdev = rdev;
    s->st_blksize = 4096;
    s->st_ino = ino;
    s->st_ino32 = (uint32_t)ino;
    s->st_dev = 5;
    return 0;
}

static long con_stat(struct lx_file *f, void *st)
{
    return stat_fill(st, LX_S_IFIFO | 0600, 0, 0x1000 + (uint32_t)(uintptr_t)f->priv);
}

static long no_seek(struct lx_file *f, int64_t off, int whence, uint64_t *out)
{
    (void)f, (void)off, (void)whence, (void)out;
    return -LX_ESPIPE;
}

static long not_tty(struct lx_file *f, uint32_t cmd, uint32_t arg)
{
    (void)f, (void)cmd, (void)arg;
    return -LX_ENOTTY;
}

static const struct lx_file_ops console_ops = {
    .read = con_read, .write = con_write, .poll = con_poll, .stat = con_stat,
    .seek = no_seek, .ioctl = not_tty,
};

void fd_init(void)
{
    for (uint32_t i = 0; i < 3; i++) {
        struct lx_file *f = file_new(&console_ops, LX_F_CONSOLE, (void *)(uintptr_t)i,
                                     i == 0 ? LX_O_RDONLY : LX_O_WRONLY);
        fd_install(f, (int)i, 0);
    }
}

/* ---- character devices ---- */
enum { DEV_NULL = 3, DEV_ZERO = 5, DEV_FULL = 7, DEV_RANDOM = 8, DEV_URANDOM = 9 };

static long dev_read(struct lx_file *f, void *buf, uint32_t n)
{
    switch ((uint32_t)(uintptr_t)f->priv) {
    case DEV_NULL:
        return 0;
    case DEV_ZERO: case DEV_FULL:
        memset(buf, 0, n);
        return (long)n;
    default:
        lx_random(buf, n);
        return (long)n;
    }
}

static long dev_write(struct lx_file *f, const void *buf, uint32_t n)
{
    (void)buf;
    return (uint32_t)(uintptr_t)f->priv == DEV_FULL ? -LX_ENOSPC : (long)n;
}

static long dev_pread(struct lx_file *f, void *buf, uint32_t n, uint64_t off)
{
    (void)off;
    return dev_read(f, buf, n);
}

static long dev_pwrite(struct lx_file *f, const void *buf, uint32_t n, uint64_t off)
{
    (void)off;
    return dev_write(f, buf, n);
}

static int dev_poll(struct lx_file *f)
{
    (void)f;
    return LX_POLLIN | LX_POLLOUT;
}

static long dev_stat(struct lx_file *f, void *st)
{
    uint32_t minor = (uint32_t)(uintptr_t)f->priv;
    return stat_fill(st, LX_S_IFCHR | 0666, (1u << 8) | minor, 0x2000 + minor);
}

static long dev_seek(struct lx_file *f, int64_t off, int whence, uint64_t *out)
{
    (void)off, (void)whence;
    f->pos = 0;
    *out = 0;
    return 0;
}

static const struct lx_file_ops dev_ops = {
    .read = dev_read, .write = dev_write, .pread = dev_pread, .pwrite = dev_pwrite,
    .poll = dev_poll, .stat = dev_stat, .seek = dev_seek, .ioctl = not_tty,
};

static const struct { const char *name; uint32_t minor; } devices[] = {
    {"null", DEV_NULL}, {"zero", DEV_ZERO}, {"full", DEV_FULL},
    {"random", DEV_RANDOM}, {"urandom", DEV_URANDOM},
};

int lx_dev_stat(const char *path, struct lx_stat64 *st);
int lx_dev_stat(const char *path, struct lx_stat64 *st)
{
    if (strncmp(path, "/dev/", 5))
        return 0;
    for (size_t i = 0; i < sizeof devices / sizeof devices[0]; i++)
        if (!strcmp(path + 5, devices[i].name)) {
            stat_fill(st, LX_S_IFCHR | 0666, (1u << 8) | devices[i].minor, 0x2000 + devices[i].minor);
            return 1;
        }
    return 0;
}

/* Opens /dev/... and /proc/self/fd/N; returns 1 with *out or a -errno in *out's place. */
int lx_open_dev(const char *path, uint32_t flags, struct lx_file **out)
{
    const char *fdp = 0;
    if (!strncmp(path, "/dev/fd/", 8))
        fdp = path + 8;
    else if (!strncmp(path, "/proc/self/fd/", 14))
        fdp = path + 14;
    else if (!strcmp(path, "/dev/stdin"))
        fdp = "0";
    else if (!strcmp(path, "/dev/stdout"))
        fdp = "1";
    else if (!strcmp(path, "/dev/stderr"))
        fdp = "2";
    if (fdp) {
        struct lx_file *f = fd_get(atoi(fdp));
        *out = f;
        if (f)
            f->refs++;
        return 1;
    }
    if (strncmp(path, "/dev/", 5))
        return 0;
    for (size_t i = 0; i < sizeof devices / sizeof devices[0]; i++)
        if (!strcmp(path + 5, devices[i].name)) {
            *out = file_new(&dev_ops, LX_F_DEV, (void *)(uintptr_t)devices[i].minor, flags);
            return 1;
        }
    *out = 0;
    return 1; /* /dev/tty and everything else under /dev: no such device here */
}

/* ---- pipes ---- */
#define PIPE_CAP 65536u
struct pipe {
    uint8_t *buf;
    uint32_t head, len;
    int readers, writers;
};

static long pipe_read(struct lx_file *f, void *buf, uint32_t n)
{
    struct pipe *p = f->priv;
    if (!p->len) {
        if (!p->writers)
            return 0;
        if (f->flags & LX_O_NONBLOCK)
            return -LX_EAGAIN;
        /* the only writer is this program, which is waiting here: Linux would block
         * forever; so does this VM, idle (it can still be killed from the host) */
        for (;;) {
            if (lx_sig_pending)
                return -LX_EINTR;
            lx_wait_any(0);
        }
    }
    uint32_t k = n < p->len ? n : p->len;
    for (uint32_t i = 0; i < k; i++)
        ((uint8_t *)buf)[i] = p->buf[(p->head + i) % PIPE_CAP];
    p->head = (p->head + k) % PIPE_CAP;
    p->len -= k;
    return (long)k;
}

static long pipe_write(struct lx_file *f, const void *buf, uint32_t n)
{
    struct pipe *p = f->priv;
    if (!p->readers) {
        lx_raise(LX_SIGPIPE);
        return -LX_EPIPE;
    }
    uint32_t room = PIPE_CAP - p->len;
    if (!room) {
        if (f->flags & LX_O_NONBLOCK)
            return -LX_EAGAIN;
        for (;;) { /* as in pipe_read: nobody else can drain it */
            if (lx_sig_pending)
                return -LX_EINTR;
            lx_wait_any(0);
        }
    }
    uint32_t k = n < room ? n : room;
    for (uint32_t i = 0; i < k; i++)
        p->buf[(p->head + p->len + i) % PIPE_CAP] = ((const uint8_t *)buf)[i];
    p->len += k;
    return (long)k;
}

static int pipe_poll(struct lx_file *f)
{
    struct pipe *p = f->priv;
    if ((f->flags & LX_O_ACCMODE) == LX_O_RDONLY)
        return (p->len ? LX_POLLIN : 0) | (!p->writers ? LX_POLLHUP : 0);
    return (p->len < PIPE_CAP ? LX_POLLOUT : 0) | (!p->readers ? LX_POLLERR : 0);
}

static void pipe_close(struct lx_file *f)
{
    struct pipe *p = f->priv;
    if ((f->flags & LX_O_ACCMODE) == LX_O_RDONLY)
        p->readers--;
    else
        p->writers--;
    if (!p->readers && !p->writers) {
        free(p->buf);
        free(p);
    }
}

static long pipe_stat(struct lx_file *f, void *st)
{
    return stat_fill(st, LX_S_IFIFO | 0600, 0, 0x3000 + ((uint32_t)(uintptr_t)f->priv & 0xffff));
}

static const struct lx_file_ops pipe_ops = {
    .read = pipe_read, .write = pipe_write, .poll = pipe_poll, .close = pipe_close,
    .stat = pipe_stat, .seek = no_seek, .ioctl = not_tty,
};

long sys_pipe2(long fdsp, long flags, long c, long d, long e, long f)
{
    (void)c, (void)d, (void)e, (void)f;
    if (flags & ~(LX_O_NONBLOCK | LX_O_CLOEXEC))
        return -LX_EINVAL;
    if (!UW(fdsp, 8))
        return -LX_EFAULT;
    struct pipe *p = calloc(1, sizeof *p);
    uint8_t *buf = malloc(PIPE_CAP);
    struct lx_file *r = file_new(&pipe_ops, LX_F_PIPE, p, LX_O_RDONLY | (flags & LX_O_NONBLOCK));
    struct lx_file *w = file_new(&pipe_ops, LX_F_PIPE, p, LX_O_WRONLY | (flags & LX_O_NONBLOCK));
    if (!p || !buf || !r || !w) {
        free(p), free(buf), free(r), free(w);
        return -LX_ENOMEM;
    }
    p->buf = buf;
    p->readers = p->writers = 1;
    int a = fd_install(r, 0, flags & LX_O_CLOEXEC);
    if (a < 0) {
        file_put(r), file_put(w);
        return a;
    }
    int b = fd_install(w, 0, flags & LX_O_CLOEXEC);
    if (b < 0) {
        fds[a] = 0;
        file_put(r), file_put(w);
        return b;
    }
    ((int32_t *)fdsp)[0] = a;
    ((int32_t *)fdsp)[1] = b;
    return 0;
}

long sys_pipe(long fdsp, long b, long c, long d, long e, long f)
{
    (void)b;
    return sys_pipe2(fdsp, 0, c, d, e, f);
}

/* ---- the generic calls ---- */
long sys_read(long fd, long buf, long n, long d, long e, long f)
{
    (void)d, (void)e, (void)f;
    struct lx_file *fl = fd_get((int)fd);
    if (!fl || (fl->flags & LX_O_ACCMODE) == LX_O_WRONLY || (fl->flags & LX_O_PATH))
        return -LX_EBADF;
    if (n < 0)
        return -LX_EINVAL;
    if (!UW(buf, n))
        return -LX_EFAULT;
    if (!fl->ops->read)
        return fl->kind == LX_F_DIR ? -LX_EISDIR : -LX_EINVAL;
    return fl->ops->read(fl, (void *)buf, (uint32_t)n);
}

long sys_write(long fd, long buf, long n, long d, long e, long f)
{
    (void)d, (void)e, (void)f;
    struct lx_file *fl = fd_get((int)fd);
    if (!fl || (fl->flags & LX_O_ACCMODE) == LX_O_RDONLY || (fl->flags & LX_O_PATH))
        return -LX_EBADF;
    if (n < 0)
        return -LX_EINVAL;
    if (!UR(buf, n))
        return -LX_EFAULT;
    if (!fl->ops->write)
        return -LX_EINVAL;
    return fl->ops->write(fl, (const void *)buf, (uint32_t)n);
}

struct lx_iovec { uint32_t base, len; };

static long vec_io(long fd, long iov, long cnt, int writing, int positioned, uint64_t off)
{
    if (cnt < 0 || cnt > 1024)
        return -LX_EINVAL;
    if (!UR(iov, (uint32_t)cnt * 8))
        return -LX_EFAULT;
    const struct lx_iovec *v = (const struct lx_iovec *)iov;
    long total = 0;
    for (long i = 0; i < cnt; i++) {
        if (!v[i].len)
            continue;
        long r;
        if (positioned) {
            struct lx_file *fl = fd_get((int)fd);
            if (!fl)
                return -LX_EBADF;
            if (writing) {
                if (!UR(v[i].base, v[i].len))
                    return total ? total : -LX_EFAULT;
                r = fl->ops->pwrite ? fl->ops->pwrite(fl, (const void *)v[i].base, v[i].len, off) : -LX_ESPIPE;
            } else {
                if (!UW(v[i].base, v[i].len))
                    return total ? total : -LX_EFAULT;
                r = fl->ops->pread ? fl->ops->pread(fl, (void *)v[i].base, v[i].len, off) : -LX_ESPIPE;
            }
            if (r > 0)
                off += (uint64_t)r;
        } else {
            r = writing ? sys_write(fd, (long)v[i].base, (long)v[i].len, 0, 0, 0)
                        : sys_read(fd, (long)v[i].base, (long)v[i].len, 0, 0, 0);
        }
        if (r < 0)
            return total ? total : r;
        total += r;
        if ((uint32_t)r < v[i].len)
            break;
    }
    return total;
}

long sys_readv(long fd, long iov, long cnt, long d, long e, long f)
{
    (void)d, (void)e, (void)f;
    return vec_io(fd, iov, cnt, 0, 0, 0);
}

long sys_writev(long fd, long iov, long cnt, long d, long e, long f)
{
    (void)d, (void)e, (void)f;
    return vec_io(fd, iov, cnt, 1, 0, 0);
}

long sys_pread64(long fd, long buf, long n, long lo, long hi, long f)
{
    (void)f;
    struct lx_file *fl = fd_get((int)fd);
    if (!fl || (fl->flags & LX_O_ACCMODE) == LX_O_WRONLY)
        return -LX_EBADF;
    if (!fl->ops->pread)
        return fl->kind == LX_F_DIR ? -LX_EISDIR : -LX_ESPIPE;
    int64_t off = (int64_t)(((uint64_t)(uint32_t)hi << 32) | (uint32_t)lo);
    if (off < 0 || n < 0)
        return -LX_EINVAL;
    if (!UW(buf, n))
        return -LX_EFAULT;
    return fl->ops->pread(fl, (void *)buf, (uint32_t)n, (uint64_t)off);
}

long sys_pwrite64(long fd, long buf, long n, long lo, long hi, long f)
{
    (void)f;
    struct lx_file *fl = fd_get((int)fd);
    if (!fl || (fl->flags & LX_O_ACCMODE) == LX_O_RDONLY)
        return -LX_EBADF;
    if (!fl->ops->pwrite)
        return -LX_ESPIPE;
    int64_t off = (int64_t)(((uint64_t)(uint32_t)hi << 32) | (uint32_t)lo);
    if (off < 0 || n < 0)
        return -LX_EINVAL;
    if (!UR(buf, n))
        return -LX_EFAULT;
    return fl->ops->pwrite(fl, (const void *)buf, (uint32_t)n, (uint64_t)off);
}

long sys_close(long fd, long b, long c, long d, long e, long f)
{
    (void)b, (void)c, (void)d, (void)e, (void)f;
    struct lx_file *fl = fd_get((int)fd);
    if (!fl)
        return -LX_EBADF;
    fds[fd] = 0;
    file_put(fl);
    return 0;
}

static long dup_to(int old, int new, int cx)
{
    struct lx_file *fl = fd_get(old);
    if (!fl || new < 0 || new >= LX_FD_MAX)
        return -LX_EBADF;
    if (old == new)
        return new;
    struct lx_file *prev = fds[new];
    fl->refs++;
    fds[new] = fl;
    cloexec[new] = (uint8_t)(cx != 0);
    if (prev)
        file_put(prev);
    return new;
}

long sys_dup(long fd, long b, long c, long d, long e, long f)
{
    (void)b, (void)c, (void)d, (void)e, (void)f;
    struct lx_file *fl = fd_get((int)fd);
    if (!fl)
        return -LX_EBADF;
    int n = fd_install(fl, 0, 0);
    if (n >= 0)
        fl->refs++;
    return n;
}

long sys_dup2(long old, long new, long c, long d, long e, long f)
{
    (void)c, (void)d, (void)e, (void)f;
    return dup_to((int)old, (int)new, 0);
}

long sys_dup3(long old, long new, long flags, long d, long e, long f)
{
    (void)d, (void)e, (void)f;
    if (old == new || (flags & ~LX_O_CLOEXEC))
        return -LX_EINVAL;
    return dup_to((int)old, (int)new, flags & LX_O_CLOEXEC);
}

#define F_DUPFD 0
#define F_GETFD 1
#define F_SETFD 2
#define F_GETFL 3
#define F_SETFL 4
#define F_GETLK 5
#define F_SETLK 6
#define F_SETLKW 7
#define F_GETLK64 12
#define F_SETLK64 13
#define F_SETLKW64 14
#define F_DUPFD_CLOEXEC 1030
#define F_GETPIPE_SZ 1032

long sys_fcntl64(long fd, long cmd, long arg, long d, long e, long f)
{
    (void)d, (void)e, (void)f;
    struct lx_file *fl = fd_get((int)fd);
    if (!fl)
        return -LX_EBADF;
    switch (cmd) {
    case F_DUPFD: case F_DUPFD_CLOEXEC: {
        if (arg < 0 || arg >= LX_FD_MAX)
            return -LX_EINVAL;
        int n = fd_install(fl, (int)arg, cmd == F_DUPFD_CLOEXEC);
        if (n >= 0)
            fl->refs++;
        return n;
    }
    case F_GETFD:
        return cloexec[fd];
    case F_SETFD:
        cloexec[fd] = (uint8_t)(arg & 1);
        return 0;
    case F_GETFL:
        return (long)(fl->flags | LX_O_LARGEFILE);
    case F_SETFL:
        fl->flags = (fl->flags & ~(uint32_t)(LX_O_APPEND | LX_O_NONBLOCK)) |
                    ((uint32_t)arg & (LX_O_APPEND | LX_O_NONBLOCK));
        return 0;
    case F_GETLK: case F_GETLK64: {
        /* one process: no other lock can conflict; l_type = F_UNLCK (2) */
        if (!UW(arg, 2))
            return -LX_EFAULT;
        *(int16_t *)arg = 2;
        return 0;
    }
    case F_SETLK: case F_SETLKW: case F_SETLK64: case F_SETLKW64:
        return 0; /* one process: every lock is granted */
    case F_GETPIPE_SZ:
        return fl->kind == LX_F_PIPE ? (long)PIPE_CAP : -LX_EBADF;
    default:
        return -LX_EINVAL;
    }
}

#define FIONREAD 0x541B
#define FIONBIO 0x5421
#define FIOCLEX 0x5451
#define FIONCLEX 0x5450

long sys_ioctl(long fd, long cmd, long arg, long d, long e, long f)
{
    (void)d, (void)e, (void)f;
    struct lx_file *fl = fd_get((int)fd);
    if (!fl)
        return -LX_EBADF;
    switch ((uint32_t)cmd) {
    case FIONBIO:
        if (!UR(arg, 4))
            return -LX_EFAULT;
        if (*(const int32_t *)arg)
            fl->flags |= LX_O_NONBLOCK;
        else
            fl->flags &= ~(uint32_t)LX_O_NONBLOCK;
        return 0;
    case FIOCLEX:
        cloexec[fd] = 1;
        return 0;
    case FIONCLEX:
        cloexec[fd] = 0;
        return 0;
    default:
        break;
    }
    if (fl->ops->ioctl)
        return fl->ops->ioctl(fl, (uint32_t)cmd, (uint32_t)arg);
    return -LX_ENOTTY;
}

static long do_seek(long fd, int64_t off, int whence, uint64_t *out)
{
    struct lx_file *fl = fd_get((int)fd);
    if (!fl)
        return -LX_EBADF;
    if (whence < 0 || whence > 4)
        return -LX_EINVAL;
    if (!fl->ops->seek)
        return -LX_ESPIPE;
    return fl->ops->seek(fl, off, whence, out);
}

long sys_lseek(long fd, long off, long whence, long d, long e, long f)
{
    (void)d, (void)e, (void)f;
    uint64_t pos;
    long r = do_seek(fd, (int64_t)off, (int)whence, &pos);
    if (r)
        return r;
    if (pos > 0x7fffffffull)
        return -75; /* EOVERFLOW */
    return (long)pos;
}

long sys_llseek(long fd, long hi, long lo, long result, long whence, long f)
{
    (void)f;
    if (!UW(result, 8))
        return -LX_EFAULT;
    uint64_t pos;
    long r = do_seek(fd, (int64_t)(((uint64_t)(uint32_t)hi << 32) | (uint32_t)lo), (int)whence, &pos);
    if (r)
        return r;
    *(uint64_t *)result = pos;
    return 0;
}

long sys_fstat64(long fd, long st, long c, long d, long e, long f)
{
    (void)c, (void)d, (void)e, (void)f;
    struct lx_file *fl = fd_get((int)fd);
    if (!fl)
        return -LX_EBADF;
    if (!UW(st, sizeof(struct lx_stat64)))
        return -LX_EFAULT;
    return fl->ops->stat ? fl->ops->stat(fl, (void *)st) : -LX_EINVAL;
}

long sys_sendfile64(long out, long in, long offp, long count, long e, long f)
{
    (void)e, (void)f;
    static uint8_t chunk[16384];
    struct lx_file *fi = fd_get((int)in);
    if (!fi || !fd_get((int)out))
        return -LX_EBADF;
    if (offp && !UW(offp, 8))
        return -LX_EFAULT;
    long total = 0;
    while (count > 0) {
        uint32_t k = count > (long)sizeof chunk ? sizeof chunk : (uint32_t)count;
        long r;
        if (offp) {
            if (!fi->ops->pread)
                return -LX_ESPIPE;
            r = fi->ops->pread(fi, chunk, k, *(uint64_t *)offp);
        } else {
            r = fi->ops->read ? fi->ops->read(fi, chunk, k) : -LX_EINVAL;
        }
        if (r <= 0)
            return total ? total : r;
        struct lx_file *fo = fd_get((int)out);
        long w = fo && fo->ops->write ? fo->ops->write(fo, chunk, (uint32_t)r) : -LX_EBADF;
        if (w < 0)
            return total ? total : w;
        if (offp)
            *(uint64_t *)offp += (uint64_t)w;
        total += w;
        count -= w;
        if (w < r)
            break;
    }
    return total;
}

/* ---- poll and select ---- */
struct lx_pollfd { int32_t fd; int16_t events, revents; };

static int poll_once(struct lx_pollfd *p, uint32_t n)
{
    int ready = 0;
    for (uint32_t i = 0; i < n; i++) {
        p[i].revents = 0;
        if (p[i].fd < 0)
            continue;
        struct lx_file *fl = fd_get(p[i].fd);
        int ev = !fl ? LX_POLLNVAL : (fl->ops->poll ? fl->ops->poll(fl) : (LX_POLLIN | LX_POLLOUT));
        if (ev & LX_POLLIN)
            ev |= LX_POLLRDNORM;
        if (ev & LX_POLLOUT)
            ev |= LX_POLLWRNORM;
        ev &= p[i].events | LX_POLLERR | LX_POLLHUP | LX_POLLNVAL;
        p[i].revents = (int16_t)ev;
        if (ev)
            ready++;
    }
    return ready;
}

/* timeout_ns: -1 forever, else relative */
static long do_poll(long fds_, long n, int64_t timeout_ns)
{
    if (n < 0 || n > LX_FD_MAX * 4)
        return -LX_EINVAL;
    if (!UW(fds_, (uint32_t)n * 8))
        return -LX_EFAULT;
    struct lx_pollfd *p = (struct lx_pollfd *)fds_;
    uint64_t deadline = timeout_ns > 0 ? clock_ns() + (uint64_t)timeout_ns : 0;
    for (;;) {
        int r = poll_once(p, (uint32_t)n);
        if (r || timeout_ns == 0)
            return r;
        if (lx_sig_pending)
            return -LX_EINTR;
        if (deadline && clock_ns() >= deadline)
            return 0;
        lx_wait_any(deadline);
    }
}

long sys_poll(long fds_, long n, long timeout, long d, long e, long f)
{
    (void)d, (void)e, (void)f;
    return do_poll(fds_, n, timeout < 0 ? -1 : (int64_t)timeout * 1000000);
}

static long ppoll_common(long fds_, long n, long tsp, int wide)
{
    int64_t t = -1;
    if (tsp) {
        if (!UR(tsp, wide ? 16 : 8))
            return -LX_EFAULT;
        int64_t s = wide ? ((const int64_t *)tsp)[0] : ((const int32_t *)tsp)[0];
        int64_t ns = wide ? ((const int64_t *)tsp)[1] : ((const int32_t *)tsp)[1];
        if (s < 0 || ns < 0 || ns >= 1000000000)
            return -LX_EINVAL;
        t = s * 1000000000ll + ns;
    }
    return do_poll(fds_, n, t);
}

long sys_ppoll(long fds_, long n, long tsp, long sig, long e, long f)
{
    (void)sig, (void)e, (void)f;
    return ppoll_common(fds_, n, tsp, 0);
}

long sys_ppoll64(long fds_, long n, long tsp, long sig, long e, long f)
{
    (void)sig, (void)e, (void)f;
    return ppoll_common(fds_, n, tsp, 1);
}

static long do_select(long nfds, long rd, long wr, long ex, int64_t timeout_ns)
{
    if (nfds < 0 || nfds > LX_FD_MAX)
        return -LX_EINVAL;
    uint32_t bytes = (uint32_t)((nfds + 31) / 32 * 4);
    if ((rd && !UW(rd, bytes)) || (wr && !UW(wr, bytes)) || (ex && !UW(ex, bytes)))
        return -LX_EFAULT;
    uint32_t *r = (uint32_t *)rd, *w = (uint32_t *)wr, *x = (uint32_t *)ex;
    uint32_t want_r[LX_FD_MAX / 32] = {0}, want_w[LX_FD_MAX / 32] = {0};
    for (uint32_t i = 0; i < bytes / 4; i++) {
        want_r[i] = r ? r[i] : 0;
        want_w[i] = w ? w[i] : 0;
    }
    for (long fd = 0; fd < nfds; fd++)
        if (((want_r[fd / 32] | want_w[fd / 32]) >> (fd % 32) & 1) && !fd_get((int)fd))
            return -LX_EBADF;
    uint64_t deadline = timeout_ns > 0 ? clock_ns() + (uint64_t)timeout_ns : 0;
    for (;;) {
        long n = 0;
        uint32_t got_r[LX_FD_MAX / 32] = {0}, got_w[LX_FD_MAX / 32] = {0};
        for (long fd = 0; fd < nfds; fd++) {
            uint32_t bit = 1u << (fd % 32);
            if (!((want_r[fd / 32] | want_w[fd / 32]) & bit))
                continue;
            struct lx_file *fl = fd_get((int)fd);
            int ev = fl->ops->poll ? fl->ops->poll(fl) : (LX_POLLIN | LX_POLLOUT);
            if ((want_r[fd / 32] & bit) && (ev & (LX_POLLIN | LX_POLLHUP | LX_POLLERR))) {
                got_r[fd / 32] |= bit;
                n++;
            }
            if ((want_w[fd / 32] & bit) && (ev & (LX_POLLOUT | LX_POLLERR))) {
                got_w[fd / 32] |= bit;
                n++;
            }
        }
        if (n || timeout_ns == 0 || (deadline && clock_ns() >= deadline) || lx_sig_pending) {
            for (uint32_t i = 0; i < bytes / 4; i++) {
                if (r)
                    r[i] = got_r[i];
                if (w)
                    w[i] = got_w[i];
                if (x)
                    x[i] = 0;
            }
            return n ? n : (lx_sig_pending && timeout_ns != 0 ? -LX_EINTR : 0);
        }
        lx_wait_any(deadline);
    }
}

long sys_select(long nfds, long rd, long wr, long ex, long tvp, long f)
{
    (void)f;
    int64_t t = -1;
    if (tvp) {
        if (!UR(tvp, 8))
            return -LX_EFAULT;
        const int32_t *tv = (const int32_t *)tvp;
        if (tv[0] < 0 || tv[1] < 0)
            return -LX_EINVAL;
        t = (int64_t)tv[0] * 1000000000ll + (int64_t)tv[1] * 1000;
    }
    return do_select(nfds, rd, wr, ex, t);
}

long sys_old_select(long args, long b, long c, long d, long e, long f)
{
    (void)b, (void)c, (void)d, (void)e, (void)f;
    if (!UR(args, 20))
        return -LX_EFAULT;
    const uint32_t *a = (const uint32_t *)args;
    return sys_select((long)a[0], (long)a[1], (long)a[2], (long)a[3], (long)a[4], 0);
}

static long pselect_common(long nfds, long rd, long wr, long ex, long tsp, int wide)
{
    int64_t t = -1;
    if (tsp) {
        if (!UR(tsp, wide ? 16 : 8))
            return -LX_EFAULT;
        int64_t s = wide ? ((const int64_t *)tsp)[0] : ((const int32_t *)tsp)[0];
        int64_t ns = wide ? ((const int64_t *)tsp)[1] : ((const int32_t *)tsp)[1];
        if (s < 0 || ns < 0 || ns >= 1000000000)
            return -LX_EINVAL;
        t = s * 1000000000ll + ns;
    }
    return do_select(nfds, rd, wr, ex, t);
}

long sys_pselect6(long nfds, long rd, long wr, long ex, long tsp, long sig)
{
    (void)sig;
    return pselect_common(nfds, rd, wr, ex, tsp, 0);
}

long sys_pselect6_64(long nfds, long rd, long wr, long ex, long tsp, long sig)
{
    (void)sig;
    return pselect_common(nfds, rd, wr, ex, tsp, 1);
}
