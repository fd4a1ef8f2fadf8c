/* eth.c: Ethernet: dispatch received frames by type, build headers for sent ones. */
#include <string.h>
#include "internal.h"

void eth_input(const uint8_t *frame, size_t len)
{
    uint16_t type = get16(frame + 12);
    if (type == ETH_P_ARP)
        arp_input(frame + ETH_HLEN, len - ETH_HLEN);
    else if (type == ETH_P_IP)
        ip_input(frame + ETH_HLEN, len - ETH_HLEN);
}

uint8_t *eth_header(uint8_t *buf, const uint8_t dst[6], uint16_t type)
{
    memcpy(buf, dst, 6);
    memcpy(buf + 6, net_mac, 6);
    put16(buf + 12, type);
    return buf + ETH_HLEN;
}
