/* What the two C generators (echo_client.c, fanout_client.c) share: the
 * clock, CPU time of a process and of this one, a blocking write, and a
 * blocking WebSocket upgrade. Included once by each; loopback only. */
#ifndef ROOSTD_BENCH_CLIENT_H
#define ROOSTD_BENCH_CLIENT_H
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

/* utime + stime of PID, in seconds. */
static double cpu_of(int pid) {
    char path[64], buf[4096];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f || !fgets(buf, sizeof buf, f)) { perror(path); exit(1); }
    fclose(f);
    char *p = strrchr(buf, ')');
    unsigned long ut = 0, st = 0;
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2) exit(1);
    return (double)(ut + st) / sysconf(_SC_CLK_TCK);
}

static double own_cpu(void) {
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    return r.ru_utime.tv_sec + r.ru_utime.tv_usec / 1e6 + r.ru_stime.tv_sec + r.ru_stime.tv_usec / 1e6;
}

static void write_all(int fd, const void *buf, size_t n) {
    const char *p = buf;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && errno == EAGAIN) { struct timespec t = {0, 100000}; nanosleep(&t, 0); continue; }
        if (w <= 0) { perror("write"); exit(1); }
        p += w;
        n -= (size_t)w;
    }
}

/* Connects and upgrades on `path`; blocking until the 101 is read whole. */
static int open_ws(int port, const char *path) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    /* A server that just said "listening" may still be a moment from
     * accepting on a loaded machine: a few tries. */
    for (int tries = 0; connect(fd, (struct sockaddr *)&a, sizeof a) < 0; tries++) {
        if (tries == 50) { perror("connect"); exit(1); }
        close(fd);
        fd = socket(AF_INET, SOCK_STREAM, 0);
        struct timespec t = {0, 20000000};
        nanosleep(&t, 0);
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    char req[1024];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                     path, port);
    write_all(fd, req, n);
    char head[4096];
    size_t n_head = 0;
    while (n_head < 4 || memcmp(head + n_head - 4, "\r\n\r\n", 4) != 0) {
        if (n_head == sizeof head - 1 || read(fd, head + n_head, 1) != 1) {
            fprintf(stderr, "upgrade of %s failed\n", path);
            exit(1);
        }
        n_head++;
    }
    head[n_head] = 0;
    if (strncmp(head, "HTTP/1.1 101", 12) != 0) {
        fprintf(stderr, "upgrade of %s refused: %.*s\n", path, (int)strcspn(head, "\r"), head);
        exit(1);
    }
    return fd;
}

#endif
