/* denali/child.h: create, run and monitor child VMs (guestos/lib/child.c).
 *
 * A thin layer over the CHILD_* hypercalls (docs/virtual-architecture.md, "Child VMs").
 * Results are DENALI_OK or a DENALI_* code. A child's events arrive as messages
 * (struct denali_hc_child_event); child_next_event blocks the calling thread only,
 * until one is queued (Irq.CHILD). */
#ifndef GUESTOS_DENALI_CHILD_H
#define GUESTOS_DENALI_CHILD_H
#include <stddef.h>
#include <stdint.h>
#include <denali/abi.h>

typedef struct denali_hc_child_event child_event_t;

/* A new child from the ELF image at image (len bytes), not yet started; *handle gets its
 * handle. disks: bit i passes this VM's disk i down; flags: DENALI_CHILD_F_DISK_RO. */
int child_create(const void *image, uint32_t len, uint32_t mem_size, uint32_t quota,
                 const char *cmdline, uint32_t disks, uint32_t flags, uint32_t *handle);
/* child_create that also returns the MAC of the child's NIC in mac[6] (when not NULL):
 * with DENALI_CHILD_F_NIC in flags the child gets a NIC of its own on this VM's LAN
 * (DENALI_NODEV when this VM has no NIC); without it mac is all zero: no NIC. */
int child_create_nic(const void *image, uint32_t len, uint32_t mem_size, uint32_t quota,
                     const char *cmdline, uint32_t disks, uint32_t flags, uint32_t *handle,
                     uint8_t mac[6]);
/* Reads the whole disk called name into a malloc'ed buffer (*image, *len: the disk's
 * size, a whole number of blocks): a child image held on a disk. */
int child_load_disk(const char *name, void **image, uint32_t *len);
int child_start(uint32_t handle);
int child_stop(uint32_t handle);
int child_resume(uint32_t handle);
int child_destroy(uint32_t handle);
int child_read(uint32_t handle, uint32_t addr, void *buf, uint32_t len);
int child_write(uint32_t handle, uint32_t addr, const void *buf, uint32_t len);
/* Interpose on the hypercalls whose bit is set in mask (bit n: number n) and, with
 * DENALI_CHILD_I_FAULT in flags, on faults. */
int child_interpose(uint32_t handle, uint64_t mask, uint32_t flags);
/* The next event (blocks this thread until there is one); DENALI_OK. */
int child_next_event(child_event_t *ev);
/* Answer a waiting event: DENALI_CHILD_PASS, _ANSWER (with result), _RESUME, _KILL. */
int child_reply(uint32_t handle, uint32_t seq, uint32_t action, uint32_t result);
/* Answer after writing len bytes at buf into the child at addr. */
int child_reply_write(uint32_t handle, uint32_t seq, uint32_t action, uint32_t result,
                      uint32_t addr, const void *buf, uint32_t len);
/* A monitor's command line is its own words, then a word "--", then its child's command
 * line. child_cmdline_get: cmdline_get (ilwaco.h) over this VM's own words only (a key of
 * the child's is never this VM's). child_cmdline: what follows the first "--" word (""
 * when there is none), to give to child_create. */
int child_cmdline_get(const char *key, char *out, size_t n);
const char *child_cmdline(void);
#endif
