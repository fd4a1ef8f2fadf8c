/* test-vregs: the virtual-register page holds what docs/virtual-architecture.md says. */
#include <ilwaco.h>
#include <stdio.h>
#include <string.h>

static int failures;
#define CHECK(c, ...) do { if (!(c)) { printf("FAIL: " __VA_ARGS__); printf("\n"); failures++; } } while (0)

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    volatile struct denali_vregs *v = DENALI_VREGS;
    CHECK(v->magic == DENALI_VREGS_MAGIC, "magic %x", v->magic);
    CHECK(v->abi_version == DENALI_ABI_VERSION, "abi %u", v->abi_version);
    CHECK(v->vm_id > 0, "vm id");
    CHECK(v->mem_size >= 256 * 1024 && v->mem_size % 4096 == 0, "mem size %u", v->mem_size);
    CHECK(v->heap_start % 4096 == 0 && v->heap_start < v->heap_end, "heap %x-%x", v->heap_start, v->heap_end);
    CHECK(v->heap_end == v->mem_size - DENALI_STACK_SIZE - DENALI_PAGE_SIZE, "heap end %x", v->heap_end);
    CHECK(v->cpu_khz > 0, "cpu khz");
    CHECK(v->slice_ns > 0, "slice");
    CHECK(v->cmdline_len == strlen(DENALI_CMDLINE), "cmdline len %u", v->cmdline_len);
    uint64_t t0 = v->time_ns;
    struct denali_hc_idle y = {1, 0, 0, 0};
    denali_hc_idle(&y); /* a new slice refreshes time_ns */
    CHECK(v->time_ns > t0, "time did not advance");
    CHECK(v->time_ns >= y.now_ns && y.now_ns > t0, "idle now_ns");
    struct denali_hc_net_info ni;
    if (denali_hc_net_info(&ni) == DENALI_OK) {
        CHECK(!memcmp(ni.mac, (const void *)v->mac, 6), "mac differs from NET_INFO");
        CHECK(ni.mtu == DENALI_NET_MTU, "mtu %u", ni.mtu);
        printf("mac=%02x:%02x:%02x:%02x:%02x:%02x\n", v->mac[0], v->mac[1], v->mac[2], v->mac[3],
               v->mac[4], v->mac[5]);
    }
    if (failures)
        return 1;
    printf("SUCCESS vm=%u mem=%u\n", v->vm_id, v->mem_size);
    return 0;
}
