#define _GNU_SOURCE
/* files.c: the file calls a C library program makes, on a fresh directory under the
 * working directory; prints what it saw, so qemu-i386 (on the host) and a Denali VM
 * (on its packed disk) can be compared line by line. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#define CHECK(x) do { long _r = (long)(x); printf("%-40s -> %ld%s%s\n", #x, _r, _r < 0 ? " " : "", _r < 0 ? strerror(errno) : ""); } while (0)

static int cmp(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static void list(const char *d)
{
    DIR *dir = opendir(d);
    char *names[64];
    int n = 0;
    struct dirent *e;
    while (dir && (e = readdir(dir)) && n < 64)
        names[n++] = strdup(e->d_name);
    if (dir)
        closedir(dir);
    qsort(names, n, sizeof names[0], cmp);
    printf("ls %s:", d);
    for (int i = 0; i < n; i++)
        printf(" %s", names[i]);
    printf("\n");
}

int main(void)
{
    char buf[256];
    struct stat st;
    CHECK(mkdir("work", 0755));
    CHECK(mkdir("work", 0755));
    CHECK(chdir("work"));
    CHECK(getcwd(buf, sizeof buf) != 0);
    int fd = open("a.txt", O_CREAT | O_WRONLY | O_TRUNC, 0644);
    CHECK(fd >= 0);
    CHECK(write(fd, "hello, world\n", 13));
    struct iovec iov[2] = {{"second ", 7}, {"line\n", 5}};
    CHECK(writev(fd, iov, 2));
    CHECK(pwrite(fd, "HELLO", 5, 0));
    CHECK(lseek(fd, 0, SEEK_CUR));
    CHECK(fsync(fd));
    CHECK(close(fd));
    CHECK(close(fd));
    fd = open("a.txt", O_RDONLY);
    memset(buf, 0, sizeof buf);
    CHECK(read(fd, buf, sizeof buf));
    printf("content: %s", buf);
    CHECK(pread(fd, buf, 5, 7));
    buf[5] = 0;
    printf("pread: %s\n", buf);
    CHECK(lseek(fd, -5, SEEK_END));
    CHECK(read(fd, buf, 3));
    CHECK(fstat(fd, &st));
    printf("size %lld mode %o nlink %u\n", (long long)st.st_size, st.st_mode & 07777, (unsigned)st.st_nlink);
    CHECK(S_ISREG(st.st_mode));
    char *m = mmap(0, 4096, PROT_READ, MAP_PRIVATE, fd, 0);
    CHECK(m != MAP_FAILED);
    printf("mmap: %.12s\n", m);
    CHECK(munmap(m, 4096));
    CHECK(close(fd));
    fd = open("a.txt", O_WRONLY | O_APPEND);
    CHECK(write(fd, "appended\n", 9));
    CHECK(ftruncate(fd, 30));
    CHECK(close(fd));
    CHECK(stat("a.txt", &st));
    printf("size after truncate %lld\n", (long long)st.st_size);
    CHECK(rename("a.txt", "b.txt"));
    CHECK(access("a.txt", F_OK));
    CHECK(access("b.txt", R_OK | W_OK));
    CHECK(symlink("b.txt", "link"));
    memset(buf, 0, sizeof buf);
    CHECK(readlink("link", buf, sizeof buf));
    printf("link -> %s\n", buf);
    CHECK(lstat("link", &st));
    CHECK(S_ISLNK(st.st_mode));
    CHECK(stat("link", &st));
    CHECK(S_ISREG(st.st_mode));
    CHECK(mkdir("sub", 0700));
    CHECK(open("sub/new", O_CREAT | O_EXCL | O_WRONLY, 0600) >= 0);
    CHECK(open("sub/new", O_CREAT | O_EXCL | O_WRONLY, 0600));
    CHECK(rmdir("sub"));
    list(".");
    list("sub");
    CHECK(unlink("sub/new"));
    CHECK(rmdir("sub"));
    CHECK(unlink("nothere"));
    CHECK(open("nothere/x", O_RDONLY));
    CHECK(open("b.txt/x", O_RDONLY));
    int p[2];
    CHECK(pipe(p));
    CHECK(write(p[1], "through a pipe", 14));
    memset(buf, 0, sizeof buf);
    CHECK(read(p[0], buf, sizeof buf));
    printf("pipe: %s\n", buf);
    CHECK(close(p[1]));
    CHECK(read(p[0], buf, sizeof buf));
    int d = dup(1);
    CHECK(d > 2);
    CHECK(dup2(d, 10));
    CHECK(write(10, "via dup2\n", 9));
    CHECK(fcntl(10, F_GETFD));
    CHECK(fcntl(10, F_SETFD, FD_CLOEXEC));
    CHECK(fcntl(10, F_GETFD));
    char *a = mmap(0, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(a != MAP_FAILED);
    CHECK(a[12345] == 0);
    memset(a, 7, 1 << 20);
    a = mremap(a, 1 << 20, 4 << 20, MREMAP_MAYMOVE);
    CHECK(a != MAP_FAILED);
    CHECK(a[(1 << 20) - 1] == 7 && a[(3 << 20)] == 0);
    CHECK(mprotect(a, 4096, PROT_READ));
    CHECK(munmap(a, 4 << 20));
    FILE *f = fopen("stdio.txt", "w");
    for (int i = 0; i < 1000; i++)
        fprintf(f, "line %d %s\n", i, i % 7 ? "x" : "seven");
    fclose(f);
    f = fopen("stdio.txt", "r");
    long sum = 0;
    int lines = 0;
    while (fgets(buf, sizeof buf, f)) {
        sum += strlen(buf);
        lines++;
    }
    fclose(f);
    printf("stdio: %d lines %ld bytes\n", lines, sum);
    list(".");
    return 3;
}
