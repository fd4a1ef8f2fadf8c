/* udpecho: echoes every UDP datagram on port 7 (and answers ping, like every VM with
 * the stack). A datagram to port 8 is answered with the VM's own figures, one
 * "name value" line each: heap_used (bytes of guest heap in use), threads, echoes,
 * udp_rx, udp_drop, rx_frames, rx_bad, ip_bad_checksum, ip_frag_bad, ip_reasm_dropped.
 * cmdline: ip=A.B.C.D/N [gw=...] [count=N: exit after N echoes]. */
#include <ilwaco.h>
#include <stdio.h>
#include <stdlib.h>
#include <net/net.h>

static volatile unsigned echoes;

static void stats_server(void *arg)
{
    int s = (int)(long)arg;
    static char in[64], out[512];
    for (;;) {
        uint32_t src;
        uint16_t sport;
        if (udp_recvfrom(s, in, sizeof in, &src, &sport, 0) < 0)
            continue;
        const struct net_stats *n = net_get_stats();
        int len = snprintf(out, sizeof out,
                           "heap_used %u\nthreads %d\nechoes %u\nudp_rx %u\nudp_drop %u\nrx_frames %u\n"
                           "rx_bad %u\nip_bad_checksum %u\nip_frag_bad %u\nip_reasm_dropped %u\n",
                           (unsigned)heap_used_bytes(), thread_count(), echoes, n->udp_rx, n->udp_drop,
                           n->rx_frames, n->rx_bad, n->ip_bad_checksum, n->ip_frag_bad, n->ip_reasm_dropped);
        if (len > 0)
            udp_sendto(s, src, sport, out, (size_t)len < sizeof out ? (size_t)len : sizeof out - 1);
    }
}

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    char v[16];
    int limit = cmdline_get("count", v, sizeof v) >= 0 ? atoi(v) : -1;
    if (net_start() != NET_OK) {
        printf("udpecho: no network (need a NIC and ip=A.B.C.D/N)\n");
        return 1;
    }
    int s = udp_bind(7);
    int ss = udp_bind(8);
    if (s < 0 || ss < 0) {
        printf("udpecho: cannot bind ports 7 and 8\n");
        return 1;
    }
    thread_t *t = thread_create(stats_server, (void *)(long)ss, 4096);
    if (t)
        thread_detach(t);
    uint32_t ip = net_ip();
    printf("udpecho: listening on %u.%u.%u.%u:7\n", ip >> 24, (ip >> 16) & 255, (ip >> 8) & 255, ip & 255);
    static char buf[NET_UDP_MAX];
    for (int n = 0; limit < 0 || n < limit; n++) {
        uint32_t src;
        uint16_t sport;
        int len = udp_recvfrom(s, buf, sizeof buf, &src, &sport, 0);
        if (len >= 0) {
            udp_sendto(s, src, sport, buf, (size_t)len);
            echoes++;
        }
    }
    printf("udpecho: done\n");
    return 0;
}
