/* netif.c: the virtual NIC driver: batched receive into fixed slots, batched transmit. */
#include <stdlib.h>
#include <string.h>
#include "internal.h"

#define RX_SLOTS 32
#define TX_SLOTS 64
#define SLOT 1536

static uint8_t rx_slots[RX_SLOTS][SLOT];
static uint32_t rx_lens[RX_SLOTS];
static uint8_t tx_slots[TX_SLOTS][SLOT];
static struct denali_iovec tx_iov[TX_SLOTS];
static int tx_count;
static int batch = RX_SLOTS; /* frames per NET_RECV / NET_SEND ("netbatch=N" on the cmdline) */
uint8_t net_mac[6];

int netif_open(void)
{
    struct denali_hc_net_info info;
    if (denali_hc_net_info(&info) != DENALI_OK)
        return NET_ERR_NODEV;
    memcpy(net_mac, info.mac, 6);
    char v[8];
    if (cmdline_get("netbatch", v, sizeof v) >= 0) {
        batch = atoi(v);
        if (batch < 1)
            batch = 1;
        if (batch > RX_SLOTS)
            batch = RX_SLOTS;
    }
    return NET_OK;
}

uint8_t *netif_tx_buffer(void)
{
    if (tx_count >= batch)
        netif_flush();
    return tx_count < TX_SLOTS ? tx_slots[tx_count] : 0;
}

void netif_tx_commit(uint8_t *buf, size_t len)
{
    if (len < DENALI_NET_MIN_FRAME) {
        memset(buf + len, 0, DENALI_NET_MIN_FRAME - len);
        len = DENALI_NET_MIN_FRAME;
    }
    tx_iov[tx_count].addr = (uint32_t)buf;
    tx_iov[tx_count].len = (uint32_t)len;
    tx_count++;
}

void netif_flush(void)
{
    if (!tx_count)
        return;
    struct denali_hc_net_send s = {(uint32_t)tx_iov, (uint32_t)tx_count, 0, 0};
    int r = denali_hc_net_send(&s);
    net_stats.tx_frames += s.sent;
    if (r == DENALI_FULL)
        net_stats.tx_full += (uint32_t)tx_count - s.sent;
    tx_count = 0;
}

int netif_poll(void)
{
    struct denali_hc_net_recv r = {(uint32_t)rx_slots, SLOT, (uint32_t)batch, (uint32_t)rx_lens, 0, 0};
    if (denali_hc_net_recv(&r) != DENALI_OK)
        return 0;
    for (uint32_t i = 0; i < r.received; i++) {
        net_stats.rx_frames++;
        if (rx_lens[i] < ETH_HLEN || rx_lens[i] > SLOT) {
            net_stats.rx_bad++;
            continue;
        }
        eth_input(rx_slots[i], rx_lens[i]);
    }
    return (int)r.received;
}
