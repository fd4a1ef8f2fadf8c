/* test-netudp: a UDP echo client and pinger.
 * cmdline: ip=... dst=A.B.C.D count=N [ping=1]. Prints "ping: r/N replies" (ping=1) and
 * "udp: e/N echoed"; exits 0 iff everything came back. */
#include <ilwaco.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <net/net.h>

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    char v[32];
    if (net_start() != NET_OK || cmdline_get("dst", v, sizeof v) < 0) {
        printf("netudp: need ip=... dst=...\n");
        return 2;
    }
    uint32_t dst = net_parse_ip(v);
    int count = cmdline_get("count", v, sizeof v) >= 0 ? atoi(v) : 5;
    int ok = 1;
    if (cmdline_get("ping", v, sizeof v) >= 0) {
        int replies = 0;
        for (int i = 0; i < count; i++)
            replies += net_ping(dst, (uint16_t)i, 1000000000ull) == NET_OK;
        printf("ping: %d/%d replies\n", replies, count);
        ok &= replies == count;
    }
    int s = udp_bind(5000);
    int echoed = 0;
    static char msg[NET_UDP_MAX], back[NET_UDP_MAX];
    for (int i = 0; i < count; i++) {
        int len = snprintf(msg, sizeof msg, "datagram %d ", i);
        while (len < 100 + i * 13 && len < NET_UDP_MAX)
        {
            msg[len] = (char)('a' + len % 26);
            len++;
        }
        for (int attempt = 0; attempt < 5; attempt++) {
            udp_sendto(s, dst, 7, msg, (size_t)len);
            int n = udp_recvfrom(s, back, sizeof back, 0, 0, clock_ns() + 300000000ull);
            if (n == len && !memcmp(msg, back, (size_t)len)) {
                echoed++;
                break;
            }
        }
    }
    printf("udp: %d/%d echoed\n", echoed, count);
    ok &= echoed == count;
    return ok ? 0 : 1;
}
