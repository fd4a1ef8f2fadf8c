/* lx.h: the Linux personality's internal interfaces (guestos/linux/).
 *
 * The personality is a guestos image that shares its VM with one unmodified static
 * i386 Linux program. The program's `int $0x80` reaches lx_entry (entry.S) through the
 * kernel's SYSCALL_ENTRY routing; lx_syscall() dispatches on EAX with the arguments in
 * EBX, ECX, EDX, ESI, EDI, EBP, exactly as a Linux kernel would, and returns -errno
 * codes. Everything the program sees of "Linux" is built here on the virtual
 * architecture: the console, the clock and idle-with-timeout, the disks (vfs.c), the
 * guestos TCP/IP stack (sock.c).
 *
 * Memory (docs/linux.md): the personality owns [0x10000, LX_PROGRAM_BASE); the program
 * owns everything above. Pointers from the program are checked with lx_user_ok()
 * against the program's own page map (mm.c), never trusted. */
#ifndef GUESTOS_LINUX_LX_H
#define GUESTOS_LINUX_LX_H
#include <stddef.h>
#include <stdint.h>
#include <ilwaco.h>

#define LX_PROGRAM_BASE 0x01000000u

/* ---- errno values (Linux i386) ---- */
#define LX_EPERM 1
#define LX_ENOENT 2
#define LX_ESRCH 3
#define LX_EINTR 4
#define LX_EIO 5
#define LX_ENXIO 6
#define LX_E2BIG 7
#define LX_EBADF 9
#define LX_ECHILD 10
#define LX_EAGAIN 11
#define LX_ENOMEM 12
#define LX_EACCES 13
#define LX_EFAULT 14
#define LX_EBUSY 16
#define LX_EEXIST 17
#define LX_EXDEV 18
#define LX_ENODEV 19
#define LX_ENOTDIR 20
#define LX_EISDIR 21
#define LX_EINVAL 22
#define LX_EMFILE 24
#define LX_ENOTTY 25
#define LX_EFBIG 27
#define LX_ENOSPC 28
#define LX_ESPIPE 29
#define LX_EROFS 30
#define LX_EPIPE 32
#define LX_ERANGE 34
#define LX_ENAMETOOLONG 36
#define LX_ENOSYS 38
#define LX_ENOTEMPTY 39
#define LX_ELOOP 40
#define LX_ENOTSOCK 88
#define LX_EDESTADDRREQ 89
#define LX_EMSGSIZE 90
#define LX_ENOPROTOOPT 92
#define LX_EPROTONOSUPPORT 93
#define LX_EOPNOTSUPP 95
#define LX_EAFNOSUPPORT 97
#define LX_EADDRINUSE 98
#define LX_EADDRNOTAVAIL 99
#define LX_ENETUNREACH 101
#define LX_ECONNRESET 104
#define LX_ENOBUFS 105
#define LX_EISCONN 106
#define LX_ENOTCONN 107
#define LX_ETIMEDOUT 110
#define LX_ECONNREFUSED 111
#define LX_EALREADY 114
#define LX_EINPROGRESS 115

/* ---- the register frame entry.S builds ---- */
struct lx_regs {
    uint32_t eax, ebx, ecx, edx, esi, edi, ebp, eflags;
};
extern uint32_t lx_resume_eip; /* written by the kernel at every routed int $0x80 */
extern uint32_t lx_user_esp;   /* the program's ESP, saved by lx_entry */
void lx_entry(void);
void lx_enter_program(uint32_t eip, uint32_t esp) __attribute__((noreturn));

typedef long (*lx_call_t)(long, long, long, long, long, long);
void lx_syscall(struct lx_regs *r);
extern int lx_trace;
__attribute__((noreturn)) void lx_exit(int status);
void lx_report(void);

/* ---- diagnostics on the error stream ---- */
void lx_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void lx_write_err(const void *buf, size_t len);
void lx_write_out(const void *buf, size_t len);

/* ---- memory (mm.c) ---- */
void mm_init(uint32_t brk_start, uint32_t stack_lo, uint32_t mem_top);
/* Nonzero when [p, p+n) is program memory with at least prot (LX_PROT_*). */
int lx_user_ok(uint32_t p, uint32_t n, int prot);
#define LX_PROT_READ 1
#define LX_PROT_WRITE 2
#define LX_PROT_EXEC 4
#define UR(p, n) lx_user_ok((uint32_t)(p), (uint32_t)(n), LX_PROT_READ)
#define UW(p, n) lx_user_ok((uint32_t)(p), (uint32_t)(n), LX_PROT_READ | LX_PROT_WRITE)
/* Length of a NUL-terminated program string of at most max bytes, or -errno. */
long lx_user_strlen(const char *s, size_t max);
long sys_brk(long a, long, long, long, long, long);
long sys_mmap2(long addr, long len, long prot, long flags, long fd, long pgoff);
long sys_old_mmap(long args, long, long, long, long, long);
long sys_munmap(long addr, long len, long, long, long, long);
long sys_mprotect(long addr, long len, long prot, long, long, long);
long sys_mremap(long old, long oldlen, long newlen, long flags, long newaddr, long);
long sys_madvise(long, long, long, long, long, long);
void mm_stats(uint32_t *mapped);

/* ---- time (time.c) ---- */
uint64_t lx_realtime_ns(void);
long sys_clock_gettime(long, long, long, long, long, long);
long sys_clock_gettime64(long, long, long, long, long, long);
long sys_clock_getres(long, long, long, long, long, long);
long sys_clock_getres64(long, long, long, long, long, long);
long sys_gettimeofday(long, long, long, long, long, long);
long sys_time(long, long, long, long, long, long);
long sys_nanosleep(long, long, long, long, long, long);
long sys_clock_nanosleep(long, long, long, long, long, long);
long sys_clock_nanosleep64(long, long, long, long, long, long);
long sys_times(long, long, long, long, long, long);
long sys_getrusage(long, long, long, long, long, long);
long sys_alarm(long, long, long, long, long, long);
long sys_setitimer(long, long, long, long, long, long);
long sys_getitimer(long, long, long, long, long, long);
void time_init(void);
void lx_check_alarm(void);       /* raise SIGALRM when its time has come */
uint64_t lx_alarm_deadline(void); /* kernel time of the next SIGALRM, or 0 */

/* ---- signals (signal.c) ---- */
#define LX_SIGABRT 6
#define LX_SIGKILL 9
#define LX_SIGSEGV 11
#define LX_SIGPIPE 13
#define LX_SIGALRM 14
#define LX_NSIG 65
void lx_raise(int sig);                  /* make sig pending for the program */
void lx_deliver_signals(struct lx_regs *r); /* at the end of every system call */
extern uint64_t lx_sig_pending;
long sys_rt_sigaction(long, long, long, long, long, long);
long sys_rt_sigprocmask(long, long, long, long, long, long);
long sys_rt_sigreturn(long, long, long, long, long, long);
long sys_sigreturn(long, long, long, long, long, long);
long sys_sigaltstack(long, long, long, long, long, long);
long sys_rt_sigpending(long, long, long, long, long, long);
long sys_rt_sigsuspend(long, long, long, long, long, long);
long sys_kill(long, long, long, long, long, long);
long sys_tgkill(long, long, long, long, long, long);
long sys_tkill(long, long, long, long, long, long);
long sys_pause(long, long, long, long, long, long);
extern struct lx_regs *lx_cur_regs;

/* ---- file descriptors (fd.c) ---- */
#define LX_FD_MAX 256
struct lx_file;
struct lx_file_ops {
    long (*read)(struct lx_file *f, void *buf, uint32_t n);
    long (*write)(struct lx_file *f, const void *buf, uint32_t n);
    long (*pread)(struct lx_file *f, void *buf, uint32_t n, uint64_t off);
    long (*pwrite)(struct lx_file *f, const void *buf, uint32_t n, uint64_t off);
    int (*poll)(struct lx_file *f);                /* LX_POLL* bits ready now */
    void (*close)(struct lx_file *f);
    long (*stat)(struct lx_file *f, void *st64);   /* fill a struct lx_stat */
    long (*seek)(struct lx_file *f, int64_t off, int whence, uint64_t *out);
    long (*ioctl)(struct lx_file *f, uint32_t cmd, uint32_t arg);
};
struct lx_file {
    const struct lx_file_ops *ops;
    uint32_t refs;
    uint32_t flags;      /* O_* status flags (O_APPEND, O_NONBLOCK, access mode) */
    uint64_t pos;
    void *priv;          /* the inode, pipe or socket */
    uint32_t dir_pos;    /* getdents cursor */
    int kind;            /* LX_F_* */
};
enum { LX_F_CONSOLE, LX_F_DEV, LX_F_FILE, LX_F_DIR, LX_F_PIPE, LX_F_SOCK };
#define LX_POLLIN 0x001
#define LX_POLLPRI 0x002
#define LX_POLLOUT 0x004
#define LX_POLLERR 0x008
#define LX_POLLHUP 0x010
#define LX_POLLNVAL 0x020
#define LX_POLLRDNORM 0x040
#define LX_POLLWRNORM 0x100

#define LX_O_ACCMODE 3
#define LX_O_RDONLY 0
#define LX_O_WRONLY 1
#define LX_O_RDWR 2
#define LX_O_CREAT 0100
#define LX_O_EXCL 0200
#define LX_O_NOCTTY 0400
#define LX_O_TRUNC 01000
#define LX_O_APPEND 02000
#define LX_O_NONBLOCK 04000
#define LX_O_LARGEFILE 0100000
#define LX_O_DIRECTORY 0200000
#define LX_O_NOFOLLOW 0400000
#define LX_O_CLOEXEC 02000000
#define LX_O_PATH 010000000
#define LX_AT_FDCWD (-100)
#define LX_AT_SYMLINK_NOFOLLOW 0x100
#define LX_AT_REMOVEDIR 0x200
#define LX_AT_EMPTY_PATH 0x1000

struct lx_file *file_new(const struct lx_file_ops *ops, int kind, void *priv, uint32_t flags);
void file_put(struct lx_file *f);
struct lx_file *fd_get(int fd);
int fd_install(struct lx_file *f, int min, int cloexec); /* fd or -EMFILE */
void fd_init(void);
/* Blocks the calling system call until any of the files is ready or deadline. */
void lx_wait_any(uint64_t deadline_ns);
void lx_wake_waiters(void);
int lx_console_ready(void);
long sys_read(long, long, long, long, long, long);
long sys_write(long, long, long, long, long, long);
long sys_readv(long, long, long, long, long, long);
long sys_writev(long, long, long, long, long, long);
long sys_pread64(long, long, long, long, long, long);
long sys_pwrite64(long, long, long, long, long, long);
long sys_close(long, long, long, long, long, long);
long sys_dup(long, long, long, long, long, long);
long sys_dup2(long, long, long, long, long, long);
long sys_dup3(long, long, long, long, long, long);
long sys_fcntl64(long, long, long, long, long, long);
long sys_ioctl(long, long, long, long, long, long);
long sys_lseek(long, long, long, long, long, long);
long sys_llseek(long, long, long, long, long, long);
long sys_pipe(long, long, long, long, long, long);
long sys_pipe2(long, long, long, long, long, long);
long sys_poll(long, long, long, long, long, long);
long sys_ppoll(long, long, long, long, long, long);
long sys_ppoll64(long, long, long, long, long, long);
long sys_select(long, long, long, long, long, long);
long sys_pselect6(long, long, long, long, long, long);
long sys_pselect6_64(long, long, long, long, long, long);
long sys_old_select(long, long, long, long, long, long);
long sys_fstat64(long, long, long, long, long, long);
long sys_sendfile64(long, long, long, long, long, long);
int lx_open_dev(const char *path, uint32_t flags, struct lx_file **out); /* 1 if a device */

/* ---- struct stat64 (i386 layout, 96 bytes) ---- */
struct lx_stat64 {
    uint64_t st_dev;
    uint8_t pad0[4];
    uint32_t st_ino32;
    uint32_t st_mode;
    uint32_t st_nlink;
    uint32_t st_uid;
    uint32_t st_gid;
    uint64_t st_rdev;
    uint8_t pad3[4];
    int64_t st_size;
    uint32_t st_blksize;
    uint64_t st_blocks;
    uint32_t st_atime, st_atime_nsec;
    uint32_t st_mtime, st_mtime_nsec;
    uint32_t st_ctime, st_ctime_nsec;
    uint64_t st_ino;
} __attribute__((packed));
_Static_assert(sizeof(struct lx_stat64) == 96, "stat64");
#define LX_S_IFMT 0170000
#define LX_S_IFSOCK 0140000
#define LX_S_IFLNK 0120000
#define LX_S_IFREG 0100000
#define LX_S_IFCHR 0020000
#define LX_S_IFDIR 0040000
#define LX_S_IFIFO 0010000

/* ---- file system (vfs.c) ---- */
void vfs_init(void);
void vfs_sync(void);
long vfs_open(int dirfd, const char *path, uint32_t flags, uint32_t mode, struct lx_file **out);
long sys_open(long, long, long, long, long, long);
long sys_openat(long, long, long, long, long, long);
long sys_creat(long, long, long, long, long, long);
long sys_stat64(long, long, long, long, long, long);
long sys_lstat64(long, long, long, long, long, long);
long sys_fstatat64(long, long, long, long, long, long);
long sys_statx(long, long, long, long, long, long);
long sys_getdents64(long, long, long, long, long, long);
long sys_access(long, long, long, long, long, long);
long sys_faccessat(long, long, long, long, long, long);
long sys_faccessat2(long, long, long, long, long, long);
long sys_readlink(long, long, long, long, long, long);
long sys_readlinkat(long, long, long, long, long, long);
long sys_getcwd(long, long, long, long, long, long);
long sys_chdir(long, long, long, long, long, long);
long sys_fchdir(long, long, long, long, long, long);
long sys_mkdir(long, long, long, long, long, long);
long sys_mkdirat(long, long, long, long, long, long);
long sys_rmdir(long, long, long, long, long, long);
long sys_unlink(long, long, long, long, long, long);
long sys_unlinkat(long, long, long, long, long, long);
long sys_rename(long, long, long, long, long, long);
long sys_renameat(long, long, long, long, long, long);
long sys_renameat2(long, long, long, long, long, long);
long sys_ftruncate64(long, long, long, long, long, long);
long sys_truncate64(long, long, long, long, long, long);
long sys_ftruncate(long, long, long, long, long, long);
long sys_truncate(long, long, long, long, long, long);
long sys_fsync(long, long, long, long, long, long);
long sys_sync(long, long, long, long, long, long);
long sys_umask(long, long, long, long, long, long);
long sys_chmod(long, long, long, long, long, long);
long sys_fchmod(long, long, long, long, long, long);
long sys_fchmodat(long, long, long, long, long, long);
long sys_chown(long, long, long, long, long, long);
long sys_fchown(long, long, long, long, long, long);
long sys_fchownat(long, long, long, long, long, long);
long sys_utimensat(long, long, long, long, long, long);
long sys_utimensat64(long, long, long, long, long, long);
long sys_symlink(long, long, long, long, long, long);
long sys_symlinkat(long, long, long, long, long, long);
long sys_link(long, long, long, long, long, long);
long sys_linkat(long, long, long, long, long, long);
long sys_statfs64(long, long, long, long, long, long);
long sys_fstatfs64(long, long, long, long, long, long);
/* Reads a whole file's bytes at off for mmap (MAP_PRIVATE): bytes read or -errno. */
long vfs_file_pread(struct lx_file *f, void *buf, uint32_t n, uint64_t off);
int vfs_is_file(struct lx_file *f);
uint32_t lx_umask(void);

/* ---- sockets (sock.c) ---- */
void sock_init(void);
void sock_linger(void);
long sys_socketcall(long, long, long, long, long, long);
long sys_socket(long, long, long, long, long, long);
long sys_socketpair(long, long, long, long, long, long);
long sys_bind(long, long, long, long, long, long);
long sys_connect(long, long, long, long, long, long);
long sys_listen(long, long, long, long, long, long);
long sys_accept4(long, long, long, long, long, long);
long sys_getsockopt(long, long, long, long, long, long);
long sys_setsockopt(long, long, long, long, long, long);
long sys_getsockname(long, long, long, long, long, long);
long sys_getpeername(long, long, long, long, long, long);
long sys_sendto(long, long, long, long, long, long);
long sys_recvfrom(long, long, long, long, long, long);
long sys_sendmsg(long, long, long, long, long, long);
long sys_recvmsg(long, long, long, long, long, long);
long sys_shutdown(long, long, long, long, long, long);

/* ---- process and system information (misc.c) ---- */
long sys_uname(long, long, long, long, long, long);
long sys_getpid(long, long, long, long, long, long);
long sys_getppid(long, long, long, long, long, long);
long sys_getuid(long, long, long, long, long, long);
long sys_set_tid_address(long, long, long, long, long, long);
long sys_set_thread_area(long, long, long, long, long, long);
long sys_get_thread_area(long, long, long, long, long, long);
long sys_getrandom(long, long, long, long, long, long);
long sys_prlimit64(long, long, long, long, long, long);
long sys_getrlimit(long, long, long, long, long, long);
long sys_setrlimit(long, long, long, long, long, long);
long sys_sysinfo(long, long, long, long, long, long);
long sys_exit(long, long, long, long, long, long);
long sys_exit_group(long, long, long, long, long, long);
long sys_sched_yield(long, long, long, long, long, long);
long sys_getgroups(long, long, long, long, long, long);
long sys_getresuid(long, long, long, long, long, long);
long sys_zero(long, long, long, long, long, long);
long sys_futex(long, long, long, long, long, long);
long sys_set_robust_list(long, long, long, long, long, long);
long sys_sched_getaffinity(long, long, long, long, long, long);
long sys_getcpu(long, long, long, long, long, long);
long sys_prctl(long, long, long, long, long, long);
long sys_wait4(long, long, long, long, long, long);
long sys_getpgrp(long, long, long, long, long, long);
long sys_personality(long, long, long, long, long, long);
void lx_random(void *buf, size_t n);
extern uint32_t lx_pid;

/* ---- small helpers ---- */
void lx_memcpy(void *dst, const void *src, size_t n); /* rep movs */
int lx_cmdline_u32(const char *key, uint32_t *out);

#endif
