/* net.c: a TCP/UDP echo server and client over the sockets API.
 *   net server PORT [N]      accept N TCP connections (default 1), echo each in upper case;
 *                            then answer N UDP datagrams on the same port
 *   net tcp IP PORT TEXT     connect, send TEXT, print the reply
 *   net udp IP PORT TEXT     send a datagram, print the reply */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int fail(const char *what)
{
    printf("%s: %s\n", what, strerror(errno));
    return 1;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, 0, _IONBF, 0);
    if (argc >= 3 && !strcmp(argv[1], "server")) {
        int port = atoi(argv[2]), n = argc > 3 ? atoi(argv[3]) : 1;
        int s = socket(AF_INET, SOCK_STREAM, 0);
        int one = 1;
        setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        struct sockaddr_in a = {0};
        a.sin_family = AF_INET;
        a.sin_port = htons(port);
        if (bind(s, (struct sockaddr *)&a, sizeof a) < 0)
            return fail("bind");
        if (listen(s, 8) < 0)
            return fail("listen");
        int u = socket(AF_INET, SOCK_DGRAM, 0);
        if (bind(u, (struct sockaddr *)&a, sizeof a) < 0)
            return fail("udp bind");
        printf("listening on %d\n", port);
        for (int i = 0; i < n; i++) {
            struct pollfd p = {s, POLLIN, 0};
            if (poll(&p, 1, -1) != 1)
                return fail("poll");
            struct sockaddr_in peer;
            socklen_t pl = sizeof peer;
            int c = accept(s, (struct sockaddr *)&peer, &pl);
            if (c < 0)
                return fail("accept");
            char buf[4096];
            ssize_t k = recv(c, buf, sizeof buf, 0);
            for (ssize_t j = 0; j < k; j++)
                buf[j] = toupper((unsigned char)buf[j]);
            send(c, buf, k, 0);
            printf("tcp from %s: %zd bytes\n", inet_ntoa(peer.sin_addr), k);
            close(c);
        }
        for (int i = 0; i < n; i++) {
            char buf[2048];
            struct sockaddr_in peer;
            socklen_t pl = sizeof peer;
            ssize_t k = recvfrom(u, buf, sizeof buf, 0, (struct sockaddr *)&peer, &pl);
            if (k < 0)
                return fail("recvfrom");
            for (ssize_t j = 0; j < k; j++)
                buf[j] = toupper((unsigned char)buf[j]);
            sendto(u, buf, k, 0, (struct sockaddr *)&peer, pl);
            printf("udp from %s: %zd bytes\n", inet_ntoa(peer.sin_addr), k);
        }
        return 0;
    }
    if (argc >= 5) {
        struct sockaddr_in a = {0};
        a.sin_family = AF_INET;
        a.sin_port = htons(atoi(argv[3]));
        inet_aton(argv[2], &a.sin_addr);
        int udp = !strcmp(argv[1], "udp");
        int s = socket(AF_INET, udp ? SOCK_DGRAM : SOCK_STREAM, 0);
        char buf[4096];
        ssize_t k;
        if (udp) {
            for (int tries = 0; tries < 20; tries++) {
                sendto(s, argv[4], strlen(argv[4]), 0, (struct sockaddr *)&a, sizeof a);
                struct pollfd p = {s, POLLIN, 0};
                if (poll(&p, 1, 500) == 1)
                    break;
            }
            k = recv(s, buf, sizeof buf - 1, 0);
        } else {
            if (connect(s, (struct sockaddr *)&a, sizeof a) < 0)
                return fail("connect");
            send(s, argv[4], strlen(argv[4]), 0);
            k = recv(s, buf, sizeof buf - 1, 0);
        }
        if (k < 0)
            return fail("recv");
        buf[k] = 0;
        printf("reply: %s\n", buf);
        close(s);
        return 0;
    }
    fprintf(stderr, "usage: net server PORT [N] | net tcp|udp IP PORT TEXT\n");
    return 2;
}
