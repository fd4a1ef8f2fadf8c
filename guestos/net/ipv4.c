/* ipv4.c: IPv4 (RFC 791): header checks, checksums, dispatch, routing, output. */
#include <string.h>
#include "internal.h"

uint32_t net_addr, net_mask, net_gw;
static uint16_t ip_id;
static uint8_t scratch[FRAME_MAX];

uint16_t ip_checksum(const void *data, size_t len, uint32_t sum)
{
    const uint8_t *p = data;
    while (len > 1) {
        sum += (uint32_t)(p[0] << 8 | p[1]);
        p += 2;
        len -= 2;
    }
    if (len)
        sum += (uint32_t)(p[0] << 8);
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

void ip_input(const uint8_t *p, size_t len)
{
    if (len < IP_HLEN || (p[0] >> 4) != 4) {
        net_stats.rx_bad++;
        return;
    }
    size_t hlen = (size_t)(p[0] & 15) * 4;
    size_t total = get16(p + 2);
    if (hlen < IP_HLEN || total < hlen || total > len) {
        net_stats.rx_bad++;
        return;
    }
    if (ip_checksum(p, hlen, 0) != 0) {
        net_stats.ip_bad_checksum++;
        return;
    }
    if (get16(p + 6) & 0x3fff) { /* MF set or a fragment offset */
        net_stats.ip_fragments++;
        return;
    }
    uint32_t src = get32(p + 12), dst = get32(p + 16);
    if (dst != net_addr && dst != 0xffffffffu && dst != (net_addr | ~net_mask)) {
        net_stats.ip_not_ours++;
        return;
    }
    const uint8_t *payload = p + hlen;
    size_t plen = total - hlen;
    if (p[9] == 1)
        icmp_input(src, payload, plen);
    else if (p[9] == 17)
        udp_input(src, dst, payload, plen);
    else if (p[9] == 6)
        tcp_input(src, dst, payload, plen);
}

int eth_send_to(uint32_t next_hop, const uint8_t *frame, size_t len)
{
    uint8_t mac[6];
    if (!arp_resolve(next_hop, mac, frame, len))
        return NET_OK; /* waits in ARP */
    uint8_t *buf = netif_tx_buffer();
    if (!buf)
        return NET_ERR_NOBUFS;
    memcpy(buf, frame, len);
    memcpy(buf, mac, 6);
    netif_tx_commit(buf, len);
    return NET_OK;
}

int ip_output(uint32_t dst, uint8_t proto, const void *payload, size_t len)
{
    if (len > FRAME_MAX - ETH_HLEN - IP_HLEN)
        return NET_ERR_INVAL;
    uint8_t *ip = eth_header(scratch, (const uint8_t *)"\0\0\0\0\0\0", ETH_P_IP);
    ip[0] = 0x45;
    ip[1] = 0;
    put16(ip + 2, (uint16_t)(IP_HLEN + len));
    put16(ip + 4, ++ip_id);
    put16(ip + 6, 0x4000); /* don't fragment */
    ip[8] = 64;
    ip[9] = proto;
    put16(ip + 10, 0);
    put32(ip + 12, net_addr);
    put32(ip + 16, dst);
    put16(ip + 10, ip_checksum(ip, IP_HLEN, 0));
    memcpy(ip + IP_HLEN, payload, len);
    size_t flen = ETH_HLEN + IP_HLEN + len;
    if (dst == 0xffffffffu || dst == (net_addr | ~net_mask)) {
        uint8_t *buf = netif_tx_buffer();
        if (!buf)
            return NET_ERR_NOBUFS;
        memcpy(buf, scratch, flen);
        memset(buf, 0xff, 6);
        netif_tx_commit(buf, flen);
        return NET_OK;
    }
    uint32_t hop = ((dst ^ net_addr) & net_mask) == 0 ? dst : net_gw;
    if (!hop)
        return NET_ERR_INVAL;
    return eth_send_to(hop, scratch, flen);
}
