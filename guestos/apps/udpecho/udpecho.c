/* udpecho: echoes every UDP datagram on port 7 (and answers ping, like every VM with
 * the stack). cmdline: ip=A.B.C.D/N [gw=...] [count=N: exit after N echoes]. */
#include <ilwaco.h>
#include <stdio.h>
#include <stdlib.h>
#include <net/net.h>

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
    uint32_t ip = net_ip();
    printf("udpecho: listening on %u.%u.%u.%u:7\n", ip >> 24, (ip >> 16) & 255, (ip >> 8) & 255, ip & 255);
    static char buf[NET_UDP_MAX];
    for (int n = 0; limit < 0 || n < limit; n++) {
        uint32_t src;
        uint16_t sport;
        int len = udp_recvfrom(s, buf, sizeof buf, &src, &sport, 0);
        if (len >= 0)
            udp_sendto(s, src, sport, buf, (size_t)len);
    }
    printf("udpecho: done\n");
    return 0;
}
