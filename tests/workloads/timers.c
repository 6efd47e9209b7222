/* timers [allow_jump|thread_clock] DIR: interval timers, POSIX timers and the clocks.
 *
 * POSIX timers, by raw syscalls so that the ids are the kernel's:
 *   t0  CLOCK_MONOTONIC, SIGRTMIN with value 0xabc0, one shot in 1000 s;
 *   t1  CLOCK_REALTIME, SIGEV_NONE, 700 s then every 7 s;
 *   t2  CLOCK_BOOTTIME, SIGRTMIN+1 to the helper thread (SIGEV_THREAD_ID),
 *       value 0x77, every 20 ms;
 *   t3  made and deleted: a gap in the ids;
 *   t4  CLOCK_PROCESS_CPUTIME_ID, SIGRTMIN+2, one shot after 500 s of CPU;
 *   t5  CLOCK_MONOTONIC, SIGRTMIN+3, never armed;
 *   t6  the helper thread's CPU-time clock (pthread_getcpuclockid), 900 s.
 * Interval timers: ITIMER_REAL 1000 s then every 500 s, ITIMER_VIRTUAL
 * 3000 s, ITIMER_PROF 2000 s then every 1 s.
 * Ready once t2 has fired 3 times (in the helper thread).
 *
 * Until SIGTERM the main thread reads CLOCK_MONOTONIC and CLOCK_BOOTTIME
 * every 10 ms: neither may ever go back, and it keeps the largest step
 * forward (DIR/last-mono holds the latest reading, updated every ~200 ms).
 * After SIGTERM: /proc/self/timers lists the same timers (ids, signals,
 * values, targets, clocks); every timer's interval is the same and its time
 * left went down by as much as CLOCK_MONOTONIC went up since ready (within
 * 1.5 s; CPU-time timers by less); t2 still fires, in the helper thread.
 * With allow_jump, the steps forward and the time-left checks are not held
 * against it (a test moves the clocks forward on purpose).
 * With thread_clock, one more timer counts the CPU time of "the calling
 * thread" (CLOCK_THREAD_CPUTIME_ID) in this process of several threads,
 * which stasis refuses to dump (which thread cannot be read back); it is
 * not checked.
 * PASS reports jump_ms= (largest step forward) and mono= (seconds). */
#include "wl.h"

#include <pthread.h>
#include <sys/syscall.h>
#include <sys/time.h>

struct ksigevent {
	union sigval value;
	int signo;
	int notify;
	int tid;
	int pad[11];
};

#define NT 7
static int ids[NT];
static volatile long ticks;
static volatile int wrong_thread;
static volatile pid_t helper_tid;

static const long ns_per_s = 1000000000L;

static long long ts_ns(struct timespec t)
{
	return (long long)t.tv_sec * ns_per_s + t.tv_nsec;
}

static long long now_ns(clockid_t c)
{
	struct timespec t;
	clock_gettime(c, &t);
	return ts_ns(t);
}

static void on_tick(int sig)
{
	(void)sig;
	if ((pid_t)syscall(SYS_gettid) != helper_tid)
		wrong_thread = 1;
	__atomic_add_fetch(&ticks, 1, __ATOMIC_RELAXED);
}

static void *helper(void *arg)
{
	(void)arg;
	helper_tid = (pid_t)syscall(SYS_gettid);
	for (;;)
		pause();
	return NULL;
}

static int mk(clockid_t clock, int notify, int signo, long value, int tid)
{
	struct ksigevent ev;
	memset(&ev, 0, sizeof(ev));
	ev.value.sival_ptr = (void *)value;
	ev.signo = signo;
	ev.notify = notify;
	ev.tid = tid;
	int id = -1;
	if (syscall(SYS_timer_create, clock, &ev, &id) != 0) {
		perror("timer_create");
		exit(2);
	}
	return id;
}

static void arm(int id, long value_s, long value_ns, long interval_s, long interval_ns)
{
	struct itimerspec s = { { interval_s, interval_ns }, { value_s, value_ns } };
	if (syscall(SYS_timer_settime, id, 0, &s, NULL) != 0) {
		perror("timer_settime");
		exit(2);
	}
}

static struct itimerspec get(int id)
{
	struct itimerspec s;
	memset(&s, 0, sizeof(s));
	if (syscall(SYS_timer_gettime, id, &s) != 0)
		wl_fail("timer_gettime(%d): %s", id, strerror(errno));
	return s;
}

/* /proc/self/timers as its entries sorted, one line each. */
static void timers_text(char *out, size_t size)
{
	static char raw[8192], ent[64][256];
	int fd = open("/proc/self/timers", O_RDONLY | O_CLOEXEC);
	ssize_t n = fd < 0 ? -1 : read(fd, raw, sizeof(raw) - 1);
	if (fd >= 0)
		close(fd);
	raw[n > 0 ? n : 0] = 0;
	int ne = -1;
	char *save = NULL;
	for (char *line = strtok_r(raw, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		if (!strncmp(line, "ID:", 3)) {
			if (ne + 1 >= 64)
				break;
			ent[++ne][0] = 0;
		}
		if (ne < 0)
			continue;
		size_t used = strlen(ent[ne]);
		snprintf(ent[ne] + used, sizeof(ent[ne]) - used, "%s; ", line);
	}
	ne++;
	for (int i = 0; i < ne; i++)
		for (int j = i + 1; j < ne; j++)
			if (strcmp(ent[j], ent[i]) < 0) {
				char t[256];
				memcpy(t, ent[i], sizeof(t));
				memcpy(ent[i], ent[j], sizeof(t));
				memcpy(ent[j], t, sizeof(t));
			}
	out[0] = 0;
	for (int i = 0; i < ne; i++) {
		size_t used = strlen(out);
		snprintf(out + used, size - used, "%s\n", ent[i]);
	}
}

int main(int argc, char **argv)
{
	int allow_jump = argc > 2 && !strcmp(argv[1], "allow_jump");
	int thread_clock = argc > 2 && !strcmp(argv[1], "thread_clock");
	wl_init(argc, argv, allow_jump || thread_clock ? 2 : 1);
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_tick;
	sa.sa_flags = SA_RESTART;
	sigaction(SIGRTMIN + 1, &sa, NULL);
	sa.sa_handler = SIG_IGN;
	sigaction(SIGALRM, &sa, NULL);
	pthread_t th;
	if (pthread_create(&th, NULL, helper, NULL) != 0)
		return 2;
	while (!__atomic_load_n(&helper_tid, __ATOMIC_ACQUIRE))
		wl_sleep_ms(1);

	ids[0] = mk(CLOCK_MONOTONIC, SIGEV_SIGNAL, SIGRTMIN, 0xabc0, 0);
	ids[1] = mk(CLOCK_REALTIME, SIGEV_NONE, SIGRTMIN, 0, 0);
	ids[2] = mk(CLOCK_BOOTTIME, SIGEV_THREAD_ID, SIGRTMIN + 1, 0x77, helper_tid);
	ids[3] = mk(CLOCK_MONOTONIC, SIGEV_SIGNAL, SIGRTMIN, 0, 0);
	ids[4] = mk(CLOCK_PROCESS_CPUTIME_ID, SIGEV_SIGNAL, SIGRTMIN + 2, 0, 0);
	ids[5] = mk(CLOCK_MONOTONIC, SIGEV_SIGNAL, SIGRTMIN + 3, 0, 0);
	if (syscall(SYS_timer_delete, ids[3]) != 0)
		return 2;
	clockid_t helper_clock;
	if (pthread_getcpuclockid(th, &helper_clock) != 0)
		return 2;
	ids[6] = mk(helper_clock, SIGEV_NONE, SIGRTMIN, 0, 0);
	arm(ids[6], 900, 0, 0, 0);
	if (thread_clock)
		arm(mk(CLOCK_THREAD_CPUTIME_ID, SIGEV_NONE, SIGRTMIN, 0, 0), 900, 0, 0, 0);
	arm(ids[0], 1000, 0, 0, 0);
	arm(ids[1], 700, 0, 7, 0);
	arm(ids[2], 0, 20000000, 0, 20000000);
	arm(ids[4], 500, 0, 0, 0);
	struct itimerval real = { { 500, 0 }, { 1000, 0 } }, virt = { { 0, 0 }, { 3000, 0 } },
			 prof = { { 1, 0 }, { 2000, 0 } };
	if (setitimer(ITIMER_REAL, &real, NULL) || setitimer(ITIMER_VIRTUAL, &virt, NULL) ||
	    setitimer(ITIMER_PROF, &prof, NULL))
		return 2;
	for (int i = 0; i < 5000 && __atomic_load_n(&ticks, __ATOMIC_RELAXED) < 3; i++)
		wl_sleep_ms(1);
	if (ticks < 3) {
		dprintf(2, "timer 2 did not fire\n");
		return 2;
	}

	static char before[4096], after[4096];
	timers_text(before, sizeof(before));
	wl_write("timers-before", "%s", before);
	long long t_ready = now_ns(CLOCK_MONOTONIC);
	struct itimerspec left0[NT];
	for (int i = 0; i < NT; i++)
		if (i != 3)
			left0[i] = get(ids[i]);
	struct itimerval real0;
	getitimer(ITIMER_REAL, &real0);
	wl_write("ready", "%d %d %d %d %d %d\n", ids[0], ids[1], ids[2], ids[4], ids[5], ids[6]);

	long long prev_m = now_ns(CLOCK_MONOTONIC), prev_b = now_ns(CLOCK_BOOTTIME), jump = 0;
	for (long n = 0; !wl_term; n++) {
		wl_sleep_ms(10);
		long long m = now_ns(CLOCK_MONOTONIC), b = now_ns(CLOCK_BOOTTIME);
		if (m < prev_m)
			wl_fail("CLOCK_MONOTONIC went back by %lld ns (from %lld to %lld)", prev_m - m, prev_m, m);
		if (b < prev_b)
			wl_fail("CLOCK_BOOTTIME went back by %lld ns (from %lld to %lld)", prev_b - b, prev_b, b);
		if (m - prev_m > jump)
			jump = m - prev_m;
		prev_m = m;
		prev_b = b;
		if (n % 20 == 0)
			wl_write("last-mono", "%lld\n", m / ns_per_s);
	}
	long long t_check = now_ns(CLOCK_MONOTONIC);
	long long passed = t_check - t_ready;

	timers_text(after, sizeof(after));
	wl_write("timers-after", "%s", after);
	if (strcmp(before, after) != 0)
		wl_fail("/proc/self/timers changed: was [%s], now [%s]", before, after);
	long want_interval[NT] = { 0, 7 * ns_per_s, 20000000, 0, 0, 0, 0 };
	if (wl_corrupt())
		want_interval[2]++;
	for (int i = 0; i < NT; i++) {
		if (i == 3)
			continue;
		struct itimerspec s = get(ids[i]);
		if (ts_ns(s.it_interval) != want_interval[i])
			wl_fail("timer %d: interval %lld ns, expected %ld", ids[i], ts_ns(s.it_interval),
				want_interval[i]);
		long long was = ts_ns(left0[i].it_value), now = ts_ns(s.it_value);
		if (i == 5) {
			if (now != 0)
				wl_fail("timer %d was never armed, now it has %lld ns left", ids[i], now);
		} else if (i == 4 || i == 6) {
			if (now <= 0 || now > was)
				wl_fail("CPU-time timer %d: %lld ns left, had %lld", ids[i], now, was);
		} else if (i != 2 && !allow_jump) {
			long long want = was - passed, off = now - want;
			if (off < -1500000000LL || off > 1500000000LL)
				wl_fail("timer %d: %lld ns left; %lld ns left at ready, and CLOCK_MONOTONIC moved %lld ns since",
					ids[i], now, was, passed);
		}
	}
	struct itimerval r, v, p;
	getitimer(ITIMER_REAL, &r);
	getitimer(ITIMER_VIRTUAL, &v);
	getitimer(ITIMER_PROF, &p);
	if (r.it_interval.tv_sec != 500 || r.it_interval.tv_usec != 0 || p.it_interval.tv_sec != 1 ||
	    v.it_interval.tv_sec != 0)
		wl_fail("interval timers: intervals %ld, %ld, %ld s", r.it_interval.tv_sec, v.it_interval.tv_sec,
			p.it_interval.tv_sec);
	long long real_was = real0.it_value.tv_sec * ns_per_s + real0.it_value.tv_usec * 1000LL;
	long long real_now = r.it_value.tv_sec * ns_per_s + r.it_value.tv_usec * 1000LL;
	if (!allow_jump && (real_now - (real_was - passed) < -1500000000LL || real_now - (real_was - passed) > 1500000000LL))
		wl_fail("ITIMER_REAL: %lld ns left; %lld at ready, and CLOCK_MONOTONIC moved %lld ns since", real_now,
			real_was, passed);
	if (v.it_value.tv_sec > 3000 || v.it_value.tv_sec < 2990 || p.it_value.tv_sec > 2000 ||
	    p.it_value.tv_sec < 1990)
		wl_fail("CPU-time interval timers: %ld s and %ld s left", v.it_value.tv_sec, p.it_value.tv_sec);

	long t0 = __atomic_load_n(&ticks, __ATOMIC_RELAXED);
	for (int i = 0; i < 5000 && __atomic_load_n(&ticks, __ATOMIC_RELAXED) < t0 + 5; i++)
		wl_sleep_ms(1);
	if (ticks < t0 + 5)
		wl_fail("timer %d stopped firing: %ld ticks in 5 s", ids[2], ticks - t0);
	if (wrong_thread)
		wl_fail("timer %d signalled a thread other than its target", ids[2]);
	if (!allow_jump && jump > 2500000000LL)
		wl_fail("CLOCK_MONOTONIC jumped forward by %lld ms", jump / 1000000);
	wl_pass_note("jump_ms=%lld mono=%lld", jump / 1000000, t_check / ns_per_s);
	return wl_finish();
}
