/* child.c: child VMs (denali/child.h). */
#include <denali/child.h>
#include <fs/disk.h>
#include <ilwaco.h>
#include <stdlib.h>
#include <string.h>

/* The first word "--" of this VM's command line, or its terminating NUL. */
static const char *dashes(void)
{
    const char *s = DENALI_CMDLINE;
    while (*s) {
        while (*s == ' ')
            s++;
        const char *w = s;
        while (*s && *s != ' ')
            s++;
        if (s - w == 2 && w[0] == '-' && w[1] == '-')
            return w;
    }
    return s;
}

const char *child_cmdline(void)
{
    const char *d = dashes();
    if (!*d)
        return d;
    d += 2;
    while (*d == ' ')
        d++;
    return d;
}

int child_cmdline_get(const char *key, char *out, size_t n)
{
    size_t klen = strlen(key);
    const char *s = DENALI_CMDLINE, *end = dashes();
    while (s < end) {
        while (s < end && *s == ' ')
            s++;
        const char *w = s;
        while (s < end && *s != ' ')
            s++;
        if ((size_t)(s - w) > klen && !strncmp(w, key, klen) && w[klen] == '=') {
            const char *v = w + klen + 1;
            size_t vlen = (size_t)(s - v);
            if (n) {
                size_t c = vlen < n - 1 ? vlen : n - 1;
                memcpy(out, v, c);
                out[c] = 0;
            }
            return (int)vlen;
        }
    }
    return -1;
}

int child_create(const void *image, uint32_t len, uint32_t mem_size, uint32_t quota,
                 const char *cmdline, uint32_t disks, uint32_t flags, uint32_t *handle)
{
    return child_create_nic(image, len, mem_size, quota, cmdline, disks, flags, handle, 0);
}

int child_create_nic(const void *image, uint32_t len, uint32_t mem_size, uint32_t quota,
                     const char *cmdline, uint32_t disks, uint32_t flags, uint32_t *handle,
                     uint8_t mac[6])
{
    struct denali_hc_child_create c = {0};
    c.image = (uint32_t)image;
    c.image_len = len;
    c.mem_size = mem_size;
    c.quota = quota;
    c.cmdline = (uint32_t)cmdline;
    c.cmdline_len = cmdline ? (uint32_t)strlen(cmdline) : 0;
    c.disks = disks;
    c.flags = flags;
    int r = denali_hc_child_create(&c);
    if (r == DENALI_OK && handle)
        *handle = c.handle;
    if (r == DENALI_OK && mac)
        memcpy(mac, c.mac, 6);
    return r;
}

int child_load_disk(const char *name, void **image, uint32_t *len)
{
    disk_t d;
    int r = disk_open(name, &d);
    if (r != DENALI_OK)
        return r;
    if (d.blocks == 0 || d.blocks > DENALI_CHILD_IMAGE_MAX / DENALI_DISK_BLOCK_SIZE)
        return DENALI_INVAL;
    uint32_t n = (uint32_t)d.blocks * DENALI_DISK_BLOCK_SIZE;
    void *buf = malloc(n);
    if (!buf)
        return DENALI_FULL;
    r = disk_read(&d, 0, (uint32_t)d.blocks, buf);
    if (r != DENALI_OK) {
        free(buf);
        return r;
    }
    *image = buf;
    *len = n;
    return DENALI_OK;
}

static int control(uint32_t handle, uint32_t op)
{
    struct denali_hc_child_control c = {handle, op};
    return denali_hc_child_control(&c);
}

int child_start(uint32_t handle) { return control(handle, DENALI_CHILD_OP_START); }
int child_stop(uint32_t handle) { return control(handle, DENALI_CHILD_OP_STOP); }
int child_resume(uint32_t handle) { return control(handle, DENALI_CHILD_OP_RESUME); }
int child_destroy(uint32_t handle) { return control(handle, DENALI_CHILD_OP_DESTROY); }

static int memory(uint32_t handle, uint32_t op, uint32_t addr, const void *buf, uint32_t len)
{
    struct denali_hc_child_memory m = {0};
    m.handle = handle;
    m.op = op;
    m.addr = addr;
    m.buf = (uint32_t)buf;
    m.len = len;
    return denali_hc_child_memory(&m);
}

int child_read(uint32_t handle, uint32_t addr, void *buf, uint32_t len)
{
    return memory(handle, DENALI_CHILD_MEM_READ, addr, buf, len);
}

int child_write(uint32_t handle, uint32_t addr, const void *buf, uint32_t len)
{
    return memory(handle, DENALI_CHILD_MEM_WRITE, addr, buf, len);
}

int child_interpose(uint32_t handle, uint64_t mask, uint32_t flags)
{
    struct denali_hc_child_interpose i = {0};
    i.handle = handle;
    i.flags = flags;
    i.hypercalls = mask;
    return denali_hc_child_interpose(&i);
}

int child_next_event(child_event_t *ev)
{
    for (;;) {
        int r = denali_hc_child_event(ev);
        if (r != DENALI_AGAIN)
            return r;
        /* a bounded wait: an event queued between AGAIN and the wait is never missed */
        irq_wait(DENALI_IRQ_CHILD, clock_ns() + 5000000u);
    }
}

int child_reply_write(uint32_t handle, uint32_t seq, uint32_t action, uint32_t result,
                      uint32_t addr, const void *buf, uint32_t len)
{
    struct denali_hc_child_reply r = {0};
    r.handle = handle;
    r.seq = seq;
    r.action = action;
    r.result = result;
    r.buf = (uint32_t)buf;
    r.len = len;
    r.addr = addr;
    return denali_hc_child_reply(&r);
}

int child_reply(uint32_t handle, uint32_t seq, uint32_t action, uint32_t result)
{
    return child_reply_write(handle, seq, action, result, 0, 0, 0);
}
