/* A second fan-out generator for B3, written apart from loadgen (issue 18:
 * "confirmed with a second load generator that is not loadgen"). Plain C,
 * epoll, no WebSocket library. S subscribers and one publisher on
 * ws://127.0.0.1:PORT:
 *   roostd (MODE "roost"): every connection opens /ws?token=TOKEN; each
 *     subscriber sends {"op":"sub","ch":"b3"} and waits for its subok; the
 *     publisher sends {"op":"pub","ch":"b3","data":"xx..."} (P bytes of pad)
 *     and reads its acks;
 *   a peer (MODE "peer"): subscribers open /sub, the publisher /pub and
 *     sends P bytes of 'x' as text (benches/peers/README.md).
 * The publisher sends R messages a second, each at its own time. After a
 * 1 s warm-up it counts the frames every subscriber receives for D seconds,
 * and reads the server's CPU time (utime + stime of /proc/PID/stat) around
 * the same window: server CPU-µs per delivery.
 *
 *   cc -O2 -o fanout_client benches/fanout_client.c
 *   taskset -c 1 ./fanout_client PORT MODE TOKEN PID SUBS RATE PAYLOAD SECONDS
 *
 * Prints one JSON line: deliveries, expected, deliveries_per_s,
 * server_cpu_us_per_delivery, client_cpu_pct. Loopback only: the host is
 * fixed to 127.0.0.1. */
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

/* What is left of the frame being read on one connection. */
struct conn {
    int fd;
    int head_have;            /* header bytes gathered so far */
    unsigned char head[14];
    unsigned long long skip;  /* payload bytes of the current frame still to read */
    long frames;              /* whole frames received */
};

/* A masked client text frame of payload `data` into out; returns its length. */
static size_t text_frame(unsigned char *out, const char *data, size_t n) {
    size_t h = 0;
    out[h++] = 0x81;
    if (n < 126) out[h++] = 0x80 | (unsigned char)n;
    else if (n <= 0xffff) { out[h++] = 0x80 | 126; out[h++] = n >> 8; out[h++] = n & 0xff; }
    else { out[h++] = 0x80 | 127; for (int i = 7; i >= 0; i--) out[h++] = (n >> (8 * i)) & 0xff; }
    memset(out + h, 0, 4); /* a zero mask leaves the payload as is */
    memcpy(out + h + 4, data, n);
    return h + 4 + n;
}

/* Reads one whole frame (blocking), for a subok; returns its payload length. */
static size_t read_frame(int fd, char *buf, size_t cap) {
    unsigned char h[2];
    if (read(fd, h, 2) != 2) { fprintf(stderr, "no answer to a sub\n"); exit(1); }
    size_t n = h[1] & 0x7f;
    if (n == 126) { unsigned char e[2]; if (read(fd, e, 2) != 2) exit(1); n = (e[0] << 8) | e[1]; }
    if (n >= cap) { fprintf(stderr, "frame too big for a subok\n"); exit(1); }
    size_t got = 0;
    while (got < n) { ssize_t r = read(fd, buf + got, n - got); if (r <= 0) exit(1); got += r; }
    buf[n] = 0;
    return n;
}

/* Counts the whole frames in `len` bytes read on c. */
static void feed(struct conn *c, const unsigned char *p, size_t len) {
    while (len > 0) {
        if (c->skip > 0) {
            size_t take = c->skip < len ? c->skip : len;
            c->skip -= take; p += take; len -= take;
            if (c->skip == 0) c->frames++;
            continue;
        }
        c->head[c->head_have++] = *p++; len--;
        if (c->head_have < 2) continue;
        int ext = (c->head[1] & 0x7f) == 126 ? 2 : (c->head[1] & 0x7f) == 127 ? 8 : 0;
        if (c->head_have < 2 + ext) continue;
        unsigned long long n = c->head[1] & 0x7f;
        if (ext) { n = 0; for (int i = 0; i < ext; i++) n = (n << 8) | c->head[2 + i]; }
        c->head_have = 0;
        if (n == 0) c->frames++; else c->skip = n;
    }
}

int main(int argc, char **argv) {
    if (argc != 9) {
        fprintf(stderr, "usage: fanout_client PORT roost|peer TOKEN PID SUBS RATE PAYLOAD SECONDS\n");
        return 2;
    }
    int port = atoi(argv[1]), roost = strcmp(argv[2], "roost") == 0, pid = atoi(argv[4]);
    int subs = atoi(argv[5]), rate = atoi(argv[6]), payload = atoi(argv[7]);
    double secs = atof(argv[8]);
    char path[1024];
    int ep = epoll_create1(0);
    struct conn *cs = calloc(subs + 1, sizeof *cs);
    unsigned char out[256 + 65536];
    char in[4096];
    for (int i = 0; i <= subs; i++) {
        int is_pub = i == subs;
        if (roost) snprintf(path, sizeof path, "/ws?token=%s", argv[3]);
        else snprintf(path, sizeof path, is_pub ? "/pub" : "/sub");
        cs[i].fd = open_ws(port, path);
        if (roost && !is_pub) {
            const char *sub = "{\"op\":\"sub\",\"ch\":\"b3\"}";
            write_all(cs[i].fd, out, text_frame(out, sub, strlen(sub)));
            read_frame(cs[i].fd, in, sizeof in);
            if (!strstr(in, "subok")) { fprintf(stderr, "no subok: %s\n", in); return 1; }
        }
        fcntl(cs[i].fd, F_SETFL, O_NONBLOCK);
        struct epoll_event e = {.events = EPOLLIN, .data.u32 = i};
        epoll_ctl(ep, EPOLL_CTL_ADD, cs[i].fd, &e);
    }
    /* The message: P bytes of pad; to roostd with an id of its own, as
     * loadgen and roost.js publish (so the server's dedupe is counted),
     * unique per run so a run is never answered from an earlier one's. */
    char *pad = malloc(payload + 1);
    memset(pad, 'x', payload);
    pad[payload] = 0;
    char *msg = malloc(payload + 128);
    unsigned nonce = (unsigned)getpid() ^ (unsigned)(now_s() * 1e6);

    double start = now_s(), warm = start + 1.0, end = warm + secs, next = start;
    long sent = 0, sent_at_warm = -1, base = 0;
    double cpu0 = 0, own0 = 0;
    struct epoll_event evs[256];
    unsigned char rbuf[1 << 16];
    for (;;) {
        double t = now_s();
        if (sent_at_warm < 0 && t >= warm) {
            sent_at_warm = sent;
            for (int i = 0; i < subs; i++) base += cs[i].frames;
            cpu0 = cpu_of(pid);
            own0 = own_cpu();
        }
        if (t >= end) break;
        /* Pace: each message at its own time (1/RATE apart), not in
         * batches, which would let a server that writes a batch to each
         * subscriber at once look cheaper than it is. */
        long due = (long)((t - start) * rate);
        while (sent < due) {
            if (roost) snprintf(msg, payload + 128, "{\"op\":\"pub\",\"ch\":\"b3\",\"id\":\"%x-%ld\",\"data\":\"%s\"}",
                                nonce, sent, pad);
            else memcpy(msg, pad, payload + 1);
            write_all(cs[subs].fd, out, text_frame(out, msg, strlen(msg)));
            sent++;
        }
        next = start + (double)(sent + 1) / rate;
        double wait = next - now_s();
        struct timespec ts = {0, 0};
        if (wait > 0) ts.tv_nsec = (long)(wait > 0.001 ? 1e6 : wait * 1e9);
        int n = epoll_pwait2(ep, evs, 256, &ts, NULL);
        for (int k = 0; k < n; k++) {
            struct conn *c = &cs[evs[k].data.u32];
            for (;;) {
                ssize_t r = read(c->fd, rbuf, sizeof rbuf);
                if (r > 0) { feed(c, rbuf, r); if (r < (ssize_t)sizeof rbuf) break; continue; }
                if (r < 0 && (errno == EAGAIN || errno == EINTR)) break;
                fprintf(stderr, "connection %u ended\n", evs[k].data.u32);
                return 1;
            }
        }
    }
    double cpu1 = cpu_of(pid), own1 = own_cpu();
    long got = -base;
    for (int i = 0; i < subs; i++) got += cs[i].frames;
    long expected = (sent - sent_at_warm) * (long)subs;
    printf("{\"deliveries\": %ld, \"expected\": %ld, \"deliveries_per_s\": %.0f, "
           "\"server_cpu_us_per_delivery\": %.3f, \"client_cpu_pct\": %.1f}\n",
           got, expected, got / secs, got > 0 ? (cpu1 - cpu0) * 1e6 / got : 0.0, (own1 - own0) * 100 / secs);
    return 0;
}
