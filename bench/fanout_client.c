/* The load client of bench/fanout.py: hold N SSE streams, measure how late each event is.

   fanout_client HOST PORT PATH N DURATION SOURCES RAMP

   One process, one epoll loop, no threads, so that holding 50,000 streams costs the
   client a few per cent of a core and the server, not the client, sets the figures.
   Connections spread over SOURCES loopback source addresses (127.0.0.1, .2, ...): one
   address has about 28,000 ephemeral ports. At most RAMP connections wait for their
   response head at once. Bodies may be chunked (dechunked here) or not.

   Lines on stdout, for the driver:
     connected OK FAILED NON200 SECONDS    every stream has its head (or failed)
   then, once the driver writes a line to stdin, it measures for DURATION s:
     result HELD EVENTS P50 P99 MAX CPU     lateness in ms (receipt
                                            time minus the "ts" in the event's JSON, unix
                                            seconds), CPU of this process in the window
                                            in % of one core
     hist BIN:COUNT ...                     every lateness, in 0.1 ms bins
   then it waits for stdin to close and closes every stream (RST: no TIME_WAIT).
*/
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

enum { IDLE, CONNECTING, HEAD, BODY, DONE };

typedef struct {
    int fd;
    unsigned char state, chunked;
    int status;
    long chunk_left;        /* >0 data left in chunk; 0 size line next; -1 CRLF after data */
    unsigned short rlen, slen;
    char raw[768];          /* the head, or a chunk-size line, in pieces */
    char sse[1024];         /* an SSE frame not yet complete */
} conn;

static conn *conns;
static int n_conns, window_open;
static double *lateness;
static long n_late, cap_late, events;

static double now_real(void) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static double now_mono(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static double cpu_seconds(void) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return u.ru_utime.tv_sec + u.ru_utime.tv_usec / 1e6 + u.ru_stime.tv_sec + u.ru_stime.tv_usec / 1e6;
}

static void on_frame(const char *frame, int len, double at) {
    const char *data = memmem(frame, len, "data:", 5);
    if (!data || !window_open)
        return;  /* a comment (": ping") or outside the window */
    events++;
    const char *ts = memmem(frame, len, "\"ts\":", 5);
    if (!ts)
        return;
    char number[40];
    int k = 0;
    for (ts += 5; ts < frame + len && *ts == ' '; ts++)
        ;
    while (ts < frame + len && k < 39 && (strchr("0123456789.eE+-", *ts)))
        number[k++] = *ts++;
    number[k] = 0;
    double sent = strtod(number, NULL);
    if (sent > 1e11)
        sent /= 1000.0;  /* milliseconds */
    if (n_late == cap_late) {
        cap_late = cap_late ? cap_late * 2 : 1 << 20;
        lateness = realloc(lateness, cap_late * sizeof(double));
    }
    lateness[n_late++] = (at - sent) * 1000.0;
}

static void feed_sse(conn *c, const char *p, long n, double at) {
    while (n > 0) {
        long room = sizeof(c->sse) - c->slen;
        long take = n < room ? n : room;
        for (long i = 0; i < take; i++)  /* CRLF and LF line ends alike (sse-starlette: CRLF) */
            if (p[i] != '\r')
                c->sse[c->slen++] = p[i];
        p += take, n -= take;
        char *start = c->sse, *end;
        while ((end = memmem(start, c->sse + c->slen - start, "\n\n", 2))) {
            on_frame(start, end - start, at);
            start = end + 2;
        }
        c->slen -= start - c->sse;
        memmove(c->sse, start, c->slen);
        if (c->slen == sizeof(c->sse))
            c->slen = 0;  /* a frame longer than the buffer: not ours to measure */
    }
}

static void feed_body(conn *c, const char *p, long n, double at) {
    if (!c->chunked) {
        feed_sse(c, p, n, at);
        return;
    }
    while (n > 0) {
        if (c->chunk_left > 0) {
            long take = n < c->chunk_left ? n : c->chunk_left;
            feed_sse(c, p, take, at);
            p += take, n -= take, c->chunk_left -= take;
            if (!c->chunk_left)
                c->chunk_left = -1;
        } else if (c->chunk_left < 0) {  /* the CRLF after a chunk's data */
            const char *lf = memchr(p, '\n', n);
            if (!lf)
                return;
            n -= lf + 1 - p, p = lf + 1, c->chunk_left = 0;
        } else {  /* the size line */
            while (n > 0 && c->rlen < sizeof(c->raw) - 1) {
                char ch = *p++;
                n--;
                c->raw[c->rlen++] = ch;
                if (ch == '\n')
                    break;
            }
            if (!c->rlen || c->raw[c->rlen - 1] != '\n')
                return;
            c->raw[c->rlen] = 0;
            long size = strtol(c->raw, NULL, 16);
            c->rlen = 0;
            if (size == 0) {
                c->state = DONE;  /* the last chunk: the server ended the stream */
                return;
            }
            c->chunk_left = size;
        }
    }
}

static int feed(conn *c, const char *p, long n, double at) {
    if (c->state == HEAD) {
        long take = n < (long)(sizeof(c->raw) - 1 - c->rlen) ? n : (long)(sizeof(c->raw) - 1 - c->rlen);
        memcpy(c->raw + c->rlen, p, take);
        c->rlen += take;
        c->raw[c->rlen] = 0;
        char *end = strstr(c->raw, "\r\n\r\n");
        if (!end)
            return c->rlen == sizeof(c->raw) - 1 ? -1 : 0;
        *end = 0;
        c->status = atoi(c->raw + 9);  /* "HTTP/1.1 200" */
        for (char *h = c->raw; *h; h++)
            *h = (*h >= 'A' && *h <= 'Z') ? *h + 32 : *h;
        c->chunked = strstr(c->raw, "transfer-encoding: chunked") != NULL;
        long body = (end + 4) - c->raw;
        long rest = c->rlen - body;
        char leftover[768];
        memcpy(leftover, c->raw + body, rest);
        c->rlen = 0, c->state = BODY, c->chunk_left = 0;
        feed_body(c, leftover, rest, at);
        feed_body(c, p + take, n - take, at);
        return 1;
    }
    feed_body(c, p, n, at);
    return 0;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(double p) {
    if (!n_late)
        return -1;
    long rank = (long)((n_late * p + 99) / 100);
    return lateness[(rank < 1 ? 1 : rank) - 1];
}

int main(int argc, char **argv) {
    if (argc != 8) {
        fprintf(stderr, "usage: %s HOST PORT PATH N DURATION SOURCES RAMP\n", argv[0]);
        return 2;
    }
    const char *host = argv[1], *path = argv[3];
    int port = atoi(argv[2]), n = atoi(argv[4]), sources = atoi(argv[6]), ramp = atoi(argv[7]);
    double duration = atof(argv[5]);
    struct rlimit lim;
    getrlimit(RLIMIT_NOFILE, &lim);
    lim.rlim_cur = lim.rlim_max;
    setrlimit(RLIMIT_NOFILE, &lim);

    char request[1024];
    int request_len = snprintf(request, sizeof request,
        "GET %s HTTP/1.1\r\nHost: %s:%d\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n",
        path, host, port);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, host, &to.sin_addr);

    n_conns = n;
    conns = calloc(n, sizeof(conn));
    int ep = epoll_create1(0);
    int next = 0, in_flight = 0, ok = 0, failed = 0, non200 = 0;
    double start = now_mono(), ramp_deadline = start + 120;
    static char buf[65536];
    struct epoll_event evs[1024];

    /* Phase 1: connect every stream and read its head. */
    while ((next < n || in_flight) && now_mono() < ramp_deadline) {
        while (next < n && in_flight < ramp) {
            conn *c = &conns[next];
            c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
            if (c->fd < 0) {
                failed++, next++;
                continue;
            }
            int one = 1;
            setsockopt(c->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
            struct sockaddr_in from = {.sin_family = AF_INET};
            from.sin_addr.s_addr = htonl(0x7f000001 + (next % sources));
            bind(c->fd, (struct sockaddr *)&from, sizeof from);
            int r = connect(c->fd, (struct sockaddr *)&to, sizeof to);
            if (r < 0 && errno != EINPROGRESS) {
                close(c->fd), c->fd = -1, failed++, next++;
                continue;
            }
            c->state = CONNECTING;
            struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.u32 = next};
            epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
            next++, in_flight++;
        }
        int k = epoll_wait(ep, evs, 1024, 100);
        double at = now_real();
        for (int i = 0; i < k; i++) {
            conn *c = &conns[evs[i].data.u32];
            if (c->state == CONNECTING) {
                int err = 0;
                socklen_t len = sizeof err;
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
                if (err || send(c->fd, request, request_len, MSG_NOSIGNAL) != request_len) {
                    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                    close(c->fd), c->fd = -1, c->state = DONE, failed++, in_flight--;
                    continue;
                }
                c->state = HEAD;
                struct epoll_event ev = {.events = EPOLLIN, .data.u32 = evs[i].data.u32};
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                continue;
            }
            long got = recv(c->fd, buf, sizeof buf, 0);
            if (got <= 0) {
                if (got < 0 && errno == EAGAIN)
                    continue;
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                if (c->state == HEAD)
                    failed++, in_flight--;
                close(c->fd), c->fd = -1, c->state = DONE;
                continue;
            }
            int was_head = c->state == HEAD;
            if (feed(c, buf, got, at) != 0 && was_head) {
                in_flight--;
                if (c->status == 200)
                    ok++;
                else
                    non200++;
            }
        }
    }
    printf("connected %d %d %d %.1f\n", ok, failed + (n - next) + in_flight, non200, now_mono() - start);
    fflush(stdout);

    /* Phase 2: keep reading; the window opens when the driver writes a line (all its
       clients at once), and closes DURATION s later. */
    struct epoll_event in = {.events = EPOLLIN, .data.u32 = 0xffffffffu};
    epoll_ctl(ep, EPOLL_CTL_ADD, 0, &in);
    double window_end = 0, cpu0 = 0;
    while (!window_open || now_mono() < window_end) {
        int k = epoll_wait(ep, evs, 1024, 50);
        double at = now_real();
        for (int i = 0; i < k; i++) {
            if (evs[i].data.u32 == 0xffffffffu) {
                read(0, buf, sizeof buf);
                epoll_ctl(ep, EPOLL_CTL_DEL, 0, NULL);
                window_open = 1, window_end = now_mono() + duration, cpu0 = cpu_seconds();
                continue;
            }
            conn *c = &conns[evs[i].data.u32];
            if (c->state != BODY && c->state != HEAD)
                continue;
            long got;
            while ((got = recv(c->fd, buf, sizeof buf, 0)) > 0) {
                feed(c, buf, got, at);
                if (got < (long)sizeof buf)
                    break;
            }
            if (got == 0 || (got < 0 && errno != EAGAIN) || c->state == DONE) {
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                c->state = DONE;
            }
        }
    }
    double cpu = (cpu_seconds() - cpu0) / duration * 100;
    int held = 0;
    for (int i = 0; i < n; i++)
        held += conns[i].state == BODY && conns[i].status == 200;
    qsort(lateness, n_late, sizeof(double), cmp);
    printf("result %d %ld %.1f %.1f %.1f %.1f\n", held, events, pct(50), pct(99),
           n_late ? lateness[n_late - 1] : -1.0, cpu);
    /* The whole distribution, for a driver merging several clients: ms*10 -> count. */
    printf("hist");
    for (long i = 0; i < n_late;) {
        long bin = (long)(lateness[i] * 10), j = i;
        while (j < n_late && (long)(lateness[j] * 10) == bin)
            j++;
        printf(" %ld:%ld", bin, j - i);
        i = j;
    }
    printf("\n");
    fflush(stdout);

    while (fgets(buf, sizeof buf, stdin))  /* the driver has read the server's figures */
        ;
    struct linger zero = {1, 0};
    for (int i = 0; i < n; i++)
        if (conns[i].fd > 0) {
            setsockopt(conns[i].fd, SOL_SOCKET, SO_LINGER, &zero, sizeof zero);
            close(conns[i].fd);
        }
    return 0;
}
