/* A second echo generator for B2, written apart from loadgen (issue 18:
 * "confirmed with a second load generator that is not loadgen"). Plain C,
 * epoll, no WebSocket library: it opens C connections to ws://127.0.0.1:PORT/PATH
 * (`/echo` for a peer, `/ws?token=...` for roostd `serve --echo`),
 * each sends one masked text frame of P bytes of 'x', waits for the whole echo,
 * sends the next. After a 1 s warm-up it counts echoes for D seconds and
 * reads the server's CPU time (utime + stime of /proc/PID/stat) around the
 * same window, so setup is not counted.
 *
 *   cc -O2 -o echo_client benches/echo_client.c
 *   taskset -c 1 ./echo_client PORT PATH PID CONNS PAYLOAD SECONDS
 *
 * Prints one JSON line: echoed, msgs_per_s, server_cpu_us_per_msg, client_cpu_pct.
 * Loopback only: the host is fixed to 127.0.0.1. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "bench_client.h"

struct conn {
    int fd;
    size_t want; /* bytes of the echo frame still to read */
};

/* A masked text frame (mask 0: the payload goes as is) and the length of its echo. */
static size_t frame(char *out, size_t n, size_t *echo_len) {
    size_t h = 0;
    out[h++] = (char)0x81;
    if (n < 126) out[h++] = (char)(0x80 | n);
    else if (n < 65536) out[h++] = (char)(0x80 | 126), out[h++] = (char)(n >> 8), out[h++] = (char)n;
    else { fprintf(stderr, "payload too big\n"); exit(2); }
    memset(out + h, 0, 4);
    memset(out + h + 4, 'x', n);
    *echo_len = h + n; /* the server's frame: the same header without the mask bit and key */
    return h + 4 + n;
}

int main(int argc, char **argv) {
    if (argc != 7) { fprintf(stderr, "usage: echo_client PORT PATH PID CONNS PAYLOAD SECONDS\n"); return 2; }
    int port = atoi(argv[1]), pid = atoi(argv[3]), conns = atoi(argv[4]);
    const char *path = argv[2];
    size_t payload = (size_t)atol(argv[5]), echo_len;
    double secs = atof(argv[6]);
    char *msg = malloc(payload + 16), *sink = malloc(1 << 16);
    size_t len = frame(msg, payload, &echo_len);
    int ep = epoll_create1(0);
    struct conn *cs = calloc((size_t)conns, sizeof *cs);
    for (int i = 0; i < conns; i++) {
        cs[i].fd = open_ws(port, path);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &cs[i]};
        epoll_ctl(ep, EPOLL_CTL_ADD, cs[i].fd, &ev);
        cs[i].want = echo_len;
        write_all(cs[i].fd, msg, len);
    }
    double start = now_s(), t0 = 0, c0 = 0, own0 = 0;
    long echoed = 0, counted = 0;
    struct epoll_event evs[256];
    for (;;) {
        double t = now_s();
        if (t0 == 0 && t - start >= 1.0) t0 = t, c0 = cpu_of(pid), own0 = own_cpu(), counted = echoed;
        if (t0 != 0 && t - t0 >= secs) break;
        int k = epoll_wait(ep, evs, 256, 100);
        for (int e = 0; e < k; e++) {
            struct conn *c = evs[e].data.ptr;
            for (;;) {
                ssize_t r = read(c->fd, sink, c->want < (1 << 16) ? c->want : (1 << 16));
                if (r < 0 && (errno == EAGAIN || errno == EINTR)) break;
                if (r <= 0) { fprintf(stderr, "connection ended\n"); return 1; }
                c->want -= (size_t)r;
                if (c->want == 0) {
                    echoed++;
                    c->want = echo_len;
                    write_all(c->fd, msg, len);
                    break;
                }
            }
        }
    }
    double dt = now_s() - t0, cpu = cpu_of(pid) - c0, own = own_cpu() - own0;
    long n = echoed - counted;
    printf("{\"echoed\": %ld, \"msgs_per_s\": %.0f, \"server_cpu_us_per_msg\": %.3f, \"client_cpu_pct\": %.0f}\n", n,
           n / dt, cpu * 1e6 / (double)n, 100 * own / dt);
    return 0;
}
