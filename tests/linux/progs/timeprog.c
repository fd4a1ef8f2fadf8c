/* timeprog.c: clocks, sleeps, timeouts and SIGALRM, checked against the host's clock. */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static volatile int alarms;
static void on_alarm(int sig) { (void)sig; alarms++; }

static double mono(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    long host = argc > 1 ? atol(argv[1]) : 0;
    struct timespec rt;
    clock_gettime(CLOCK_REALTIME, &rt);
    printf("realtime within 5s of host: %s\n", labs((long)rt.tv_sec - host) <= 5 ? "yes" : "no");
    struct timeval tv;
    gettimeofday(&tv, 0);
    printf("gettimeofday agrees: %s\n", labs((long)tv.tv_sec - (long)rt.tv_sec) <= 1 ? "yes" : "no");
    printf("time agrees: %s\n", labs((long)time(0) - (long)rt.tv_sec) <= 1 ? "yes" : "no");
    double t0 = mono();
    struct timespec req = {0, 50 * 1000 * 1000};
    nanosleep(&req, 0);
    double slept = mono() - t0;
    printf("nanosleep 50ms: %s\n", slept >= 0.050 && slept < 1.0 ? "ok" : "bad");
    t0 = mono();
    struct timespec abs;
    clock_gettime(CLOCK_MONOTONIC, &abs);
    abs.tv_nsec += 30 * 1000 * 1000;
    if (abs.tv_nsec >= 1000000000) { abs.tv_sec++; abs.tv_nsec -= 1000000000; }
    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &abs, 0);
    slept = mono() - t0;
    printf("clock_nanosleep abs 30ms: %s\n", slept >= 0.029 && slept < 1.0 ? "ok" : "bad");
    t0 = mono();
    int p[2];
    pipe(p);
    struct pollfd pfd = {p[0], POLLIN, 0};
    int r = poll(&pfd, 1, 40);
    slept = mono() - t0;
    printf("poll empty pipe timeout 40ms: r=%d %s\n", r, slept >= 0.039 ? "ok" : "bad");
    t0 = mono();
    struct timeval to = {0, 20000};
    r = select(0, 0, 0, 0, &to);
    slept = mono() - t0;
    printf("select timeout 20ms: r=%d %s\n", r, slept >= 0.019 ? "ok" : "bad");
    signal(SIGALRM, on_alarm);
    alarm(1);
    t0 = mono();
    pause();
    slept = mono() - t0;
    printf("alarm(1)+pause: alarms=%d %s\n", alarms, slept >= 0.99 && slept < 3 ? "ok" : "bad");
    struct itimerval it = {{0, 20000}, {0, 20000}};
    setitimer(ITIMER_REAL, &it, 0);
    while (alarms < 4) {
        struct timespec z = {1, 0};
        nanosleep(&z, 0); /* interrupted by each SIGALRM */
    }
    memset(&it, 0, sizeof it);
    setitimer(ITIMER_REAL, &it, 0);
    printf("setitimer 20ms x3: alarms=%d\n", alarms);
    struct timespec res;
    clock_getres(CLOCK_MONOTONIC, &res);
    printf("resolution <= 1ms: %s\n", res.tv_sec == 0 && res.tv_nsec <= 1000000 ? "yes" : "no");
    return 0;
}
