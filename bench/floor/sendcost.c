/*
 * The floor under every fan-out figure: what one loopback TCP send costs on
 * this machine with nothing of stampede in the way.
 *
 *   cc -O2 -o /tmp/sendcost bench/floor/sendcost.c
 *   /tmp/sendcost CONNS RATE [SECONDS] [BYTES]
 *
 * CONNS loopback TCP connections (TCP_NODELAY, like stampede's). A receiver
 * process pinned to core 1 drains them with one epoll loop; the sender,
 * pinned to core 0, sends BYTES-byte messages (default 300, about one
 * MESSAGE frame of the tail benchmark) round-robin, one send(2) each, RATE
 * sends/s (0 = flat out) for SECONDS (default 5). It prints the sends/s it
 * achieved and its own CPU time (user + system) per send.
 *
 * On loopback the sender's send(2) also runs the receiving socket's TCP
 * input and the wake-up of the reader (softirq in the sender's context), so
 * this is what a server pays per delivery of one message in one write, as
 * stampede does when a member gets one message per flush.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void pin(int cpu) {
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(cpu, &s);
    if (sched_setaffinity(0, sizeof s, &s) != 0) perror("sched_setaffinity");
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static double cpu_seconds(void) {
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    return r.ru_utime.tv_sec + r.ru_stime.tv_sec + (r.ru_utime.tv_usec + r.ru_stime.tv_usec) / 1e6;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s CONNS RATE [SECONDS] [BYTES]\n", argv[0]);
        return 2;
    }
    int n = atoi(argv[1]);
    double rate = atof(argv[2]);
    double secs = argc > 3 ? atof(argv[3]) : 5;
    int bytes = argc > 4 ? atoi(argv[4]) : 300;
    if (n < 1 || bytes < 1 || bytes > 65536 || secs <= 0) return 2;

    int ls = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (bind(ls, (void *)&a, sizeof a) || listen(ls, 4096) || getsockname(ls, (void *)&a, &len)) {
        perror("listen");
        return 1;
    }
    int *srv = malloc(n * sizeof(int)), *cli = malloc(n * sizeof(int));
    for (int i = 0; i < n; i++) {
        cli[i] = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(cli[i], (void *)&a, sizeof a) || (srv[i] = accept(ls, 0, 0)) < 0) {
            perror("connect/accept");
            return 1;
        }
        int one = 1;
        setsockopt(srv[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    pid_t child = fork();
    if (child == 0) {
        pin(1);
        int ep = epoll_create1(0);
        for (int i = 0; i < n; i++) {
            struct epoll_event e = {.events = EPOLLIN, .data.fd = cli[i]};
            epoll_ctl(ep, EPOLL_CTL_ADD, cli[i], &e);
        }
        static char buf[65536];
        struct epoll_event ev[256];
        double end = now() + secs + 2;
        while (now() < end) {
            int k = epoll_wait(ep, ev, 256, 100);
            for (int j = 0; j < k; j++)
                if (read(ev[j].data.fd, buf, sizeof buf) < 0) perror("read");
        }
        _exit(0);
    }
    pin(0);
    char *msg = malloc(bytes);
    memset(msg, 'x', bytes);
    long sent = 0, refused = 0;
    double t0 = now(), c0 = cpu_seconds();
    int i = 0;
    while (now() - t0 < secs) {
        if (send(srv[i], msg, bytes, MSG_DONTWAIT) != bytes) refused++;
        i = (i + 1) % n;
        sent++;
        if (rate > 0) {
            double wait = t0 + sent / rate - now();
            if (wait > 0) {
                struct timespec ts = {(time_t)wait, (long)((wait - (time_t)wait) * 1e9)};
                nanosleep(&ts, 0);
            }
        }
    }
    double cpu = cpu_seconds() - c0, wall = now() - t0;
    printf("{\"conns\": %d, \"target_rate\": %.0f, \"bytes\": %d, \"sends_per_s\": %.0f, "
           "\"sender_cpu_pct\": %.1f, \"us_per_send\": %.2f, \"short_sends\": %ld}\n",
           n, rate, bytes, sent / wall, cpu / wall * 100, cpu / sent * 1e6, refused);
    kill(child, SIGKILL);
    waitpid(child, 0, 0);
    return 0;
}
