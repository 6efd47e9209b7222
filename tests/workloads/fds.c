/* fds MODE DIR: one kind of special fd, built at fixed fd numbers, checked
 * after SIGTERM from inside.
 *
 *   eventfd   fd 10 count 5 (O_NONBLOCK), fd 11 count 3 EFD_SEMAPHORE,
 *             fd 12 count 2^40+7 (more than eventfd2's 32-bit initial value),
 *             fd 13 a dup of fd 10
 *   timerfd   fd 10 CLOCK_MONOTONIC one-shot 60 s, fd 11 CLOCK_MONOTONIC every
 *             20 ms (O_NONBLOCK), fd 12 CLOCK_REALTIME absolute (now + 120 s,
 *             TFD_TIMER_CANCEL_ON_SET), fd 13 CLOCK_BOOTTIME one-shot that
 *             expired once and was not read, fd 14 CLOCK_MONOTONIC absolute
 *             (now + 90 s, interval 1 s)
 *   signalfd  SIGUSR1, SIGUSR2, SIGRTMIN+2 blocked; fd 10 signalfd of
 *             SIGUSR1|SIGUSR2 (O_NONBLOCK) with SIGUSR1 pending, fd 11
 *             signalfd of SIGRTMIN+2 with one queued (value 4242)
 *   epoll     fd 10 epoll watching fd 11 (eventfd, ready), 12 (pipe read end
 *             with data, edge-triggered), 13 (pipe write end, EPOLLOUT),
 *             14 (eventfd, EPOLLONESHOT, already reported), 15 (another epoll
 *             watching fd 11), 16 (eventfd, not ready); each with its data;
 *             a thread blocked in epoll_wait on fd 17 (epoll of the eventfd
 *             at fd 18), woken by a write after the restore
 *   memfd     fd 10 memfd "stasis data" (3 pages + 100 bytes, offset 777,
 *             F_SEAL_SHRINK|F_SEAL_GROW), fd 11 memfd "plain" (no sealing,
 *             1 MiB sparse with "hello" at 512 KiB), fd 12 a second
 *             description of fd 10's memfd (read-only, offset 5), fd 13 memfd
 *             "mapped" also mapped shared; memfd "maponly" only mapped shared
 *             (and shared with a child, which writes into it when asked
 *             through fd 20 and answers on fd 21); memfd "private" only
 *             mapped private with its first page changed
 *   locks     fd 10 flock LOCK_EX, fd 11 flock LOCK_SH, fd 12 OFD write lock
 *             on bytes 0-99 and read lock from 200 to EOF, fd 13 POSIX write
 *             lock on bytes 10-19 and read lock from 100 to EOF; a child
 *             holding a POSIX write lock on DIR/child.dat
 *   inotify   fd 10 inotify (O_NONBLOCK) with wd 1 (DIR/w1, IN_CREATE|IN_DELETE),
 *             wd 2 (DIR/w2/file, IN_MODIFY), wd 3 removed, wd 4 (a directory
 *             in /tmp, IN_CREATE), wd 5 (DIR/w3, IN_CREATE|IN_ONESHOT)
 *   pidfd     a child; fd 10 pidfd of the child, fd 11 pidfd of the process
 *             itself (PIDFD_NONBLOCK), fd 12 a dup of fd 10, fd 14 pidfd of a
 *             child already reaped, fd 13 pidfd of
 *             a zombie child (exit status 7)
 *   maplocks  locks held only through shared mappings, their fds closed:
 *             DIR/maplock-flock.dat (2 pages, flock LOCK_EX, mapped shared
 *             read-write), DIR/maplock-ofd.dat (1 page, OFD write lock on
 *             bytes 0-99 and read lock from 200 to EOF, mapped shared
 *             read-only), DIR/maplock-sh.dat (flock LOCK_SH through a
 *             mapping, and another LOCK_SH through fd 10); a forked
 *             process must fail to take them (fd 10 closed first), and the
 *             mappings still show the files' contents both ways
 *   hsperf    what a JVM does with its performance-data file: mkdir
 *             /tmp/hsperfdata_USER, open /tmp/hsperfdata_USER/PID, flock
 *             LOCK_EX|LOCK_NB, ftruncate to 32 KiB, map it shared, close
 *             the fd, keep writing counters into the mapping; the file is
 *             removed at exit
 *
 * Modes whose dump must be refused, counting every millisecond into DIR/count
 * until SIGTERM, then checking the resource still works:
 *   refuse-pidfd    fd 9 pidfd of PID 1 (outside the dumped tree)
 *   refuse-epoll    fd 9 epoll watching an eventfd added as fd 5, then moved
 *                   to fd 6 (fd 5 closed: the watch lives on)
 *   refuse-uffd     fd 9 userfaultfd
 *   refuse-inotify  fd 9 inotify with an unread event
 *   refuse-maplock  a flock LOCK_EX on a memfd whose description lives on
 *                   only in a shared mapping (its fd closed)
 *   pty             fd 9 a pty master from /dev/ptmx, fd 8 its slave, data
 *                   passing both ways after the restore */
#include "wl.h"

#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <sys/wait.h>

#ifndef PIDFD_NONBLOCK
#define PIDFD_NONBLOCK O_NONBLOCK
#endif
#ifndef P_PIDFD
#define P_PIDFD 3
#endif

static void at(int fd, int f)
{
	if (f < 0) {
		dprintf(2, "creating fd %d: %s\n", fd, strerror(errno));
		exit(2);
	}
	if (f != fd) {
		if (dup2(f, fd) != fd) {
			dprintf(2, "dup2 to %d: %s\n", fd, strerror(errno));
			exit(2);
		}
		close(f);
	}
}

static void must(int ok, const char *what)
{
	if (!ok) {
		dprintf(2, "%s: %s\n", what, strerror(errno));
		exit(2);
	}
}

/* fdinfo of fd `fd`, NUL-terminated, in buf. */
static void fdinfo(int fd, char *buf, size_t size)
{
	char p[64];
	snprintf(p, sizeof(p), "/proc/self/fdinfo/%d", fd);
	int f = open(p, O_RDONLY | O_CLOEXEC);
	ssize_t n = f < 0 ? -1 : read(f, buf, size - 1);
	if (f >= 0)
		close(f);
	buf[n > 0 ? n : 0] = 0;
}

/* The number after the line start "key" in fdinfo of fd (in `base`), or -1. */
static long long fdinfo_num(int fd, const char *key, int base)
{
	static char buf[16384];
	char k[64];
	buf[0] = '\n';
	fdinfo(fd, buf + 1, sizeof(buf) - 1);
	snprintf(k, sizeof(k), "\n%s", key);
	char *p = strstr(buf, k);
	return p ? strtoll(p + strlen(k), NULL, base) : -1;
}

static void expect_nonblock(int fd, int want)
{
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0)
		wl_fail("fd %d is not open", fd);
	else if (!!(fl & O_NONBLOCK) != want)
		wl_fail("fd %d: O_NONBLOCK is %s, expected %s", fd, fl & O_NONBLOCK ? "set" : "clear",
			want ? "set" : "clear");
}

static void expect_link(int fd, const char *want)
{
	char p[64], l[512];
	snprintf(p, sizeof(p), "/proc/self/fd/%d", fd);
	ssize_t n = readlink(p, l, sizeof(l) - 1);
	l[n > 0 ? n : 0] = 0;
	if (strcmp(l, want) != 0)
		wl_fail("fd %d is %s, expected %s", fd, l, want);
}

static int64_t now_ns(clockid_t c)
{
	struct timespec ts;
	clock_gettime(c, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int64_t ts_ns(struct timespec t)
{
	return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* ---- eventfd ---------------------------------------------------------- */

#define BIG_COUNT ((1ULL << 40) + 7)

static void eventfd_setup(void)
{
	at(10, eventfd(0, EFD_NONBLOCK));
	uint64_t v = 5;
	must(write(10, &v, 8) == 8, "write eventfd 10");
	at(11, eventfd(3, EFD_SEMAPHORE));
	at(12, eventfd(0, 0));
	v = BIG_COUNT;
	must(write(12, &v, 8) == 8, "write eventfd 12");
	at(13, dup(10));
}

static void eventfd_check(void)
{
	uint64_t v = 0;
	expect_link(10, "anon_inode:[eventfd]");
	expect_nonblock(10, 1);
	expect_nonblock(11, 0);
	expect_nonblock(12, 0);
	if (fdinfo_num(11, "eventfd-semaphore:", 10) != 1)
		wl_fail("fd 11: fdinfo does not say eventfd-semaphore: 1");
	if (read(10, &v, 8) != 8 || v != 5)
		wl_fail("fd 10: read %llu, expected the count 5", (unsigned long long)v);
	if (read(10, &v, 8) != -1 || errno != EAGAIN)
		wl_fail("fd 10: a second read did not fail with EAGAIN");
	v = 2;
	if (write(13, &v, 8) != 8 || read(10, &v, 8) != 8 || v != 2)
		wl_fail("fds 10 and 13 are not the same eventfd any more");
	fcntl(11, F_SETFL, O_NONBLOCK);
	for (int i = 0; i < 3; i++)
		if (read(11, &v, 8) != 8 || v != 1)
			wl_fail("fd 11: semaphore read %d gave %llu, expected 1", i + 1, (unsigned long long)v);
	if (read(11, &v, 8) != -1 || errno != EAGAIN)
		wl_fail("fd 11: a fourth semaphore read did not fail with EAGAIN");
	if (read(12, &v, 8) != 8 || v != BIG_COUNT)
		wl_fail("fd 12: read %llu, expected %llu", (unsigned long long)v, BIG_COUNT);
	wl_pass_note("eventfds=4");
}

/* ---- timerfd ---------------------------------------------------------- */

static int64_t timer_set_at, timer_ready_at, rt_deadline, mono_deadline;

static void timerfd_setup(void)
{
	timer_set_at = now_ns(CLOCK_MONOTONIC);
	at(10, timerfd_create(CLOCK_MONOTONIC, 0));
	struct itimerspec one = { { 0, 0 }, { 60, 0 } };
	must(timerfd_settime(10, 0, &one, NULL) == 0, "timerfd 10");
	at(11, timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK));
	struct itimerspec per = { { 0, 20000000 }, { 0, 20000000 } };
	must(timerfd_settime(11, 0, &per, NULL) == 0, "timerfd 11");
	at(12, timerfd_create(CLOCK_REALTIME, 0));
	rt_deadline = now_ns(CLOCK_REALTIME) + 120 * 1000000000LL;
	struct itimerspec abs = { { 0, 0 }, { rt_deadline / 1000000000, rt_deadline % 1000000000 } };
	must(timerfd_settime(12, TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET, &abs, NULL) == 0, "timerfd 12");
	at(13, timerfd_create(CLOCK_BOOTTIME, 0));
	struct itimerspec shot = { { 0, 0 }, { 0, 1000000 } };
	must(timerfd_settime(13, 0, &shot, NULL) == 0, "timerfd 13");
	struct pollfd p = { 13, POLLIN, 0 };
	must(poll(&p, 1, 5000) == 1, "waiting for timerfd 13");
	at(14, timerfd_create(CLOCK_MONOTONIC, 0));
	mono_deadline = now_ns(CLOCK_MONOTONIC) + 90 * 1000000000LL;
	struct itimerspec mabs = { { 1, 0 }, { mono_deadline / 1000000000, mono_deadline % 1000000000 } };
	must(timerfd_settime(14, TFD_TIMER_ABSTIME, &mabs, NULL) == 0, "timerfd 14");
	/* Let time pass, so that a timer re-armed with its full time is caught. */
	wl_sleep_ms(300);
	timer_ready_at = now_ns(CLOCK_MONOTONIC);
}

static void timerfd_check(void)
{
	struct itimerspec cur;
	int64_t elapsed = now_ns(CLOCK_MONOTONIC) - timer_set_at;
	int64_t before_ready = timer_ready_at - timer_set_at;
	expect_link(10, "anon_inode:[timerfd]");
	if (timerfd_gettime(10, &cur) != 0)
		wl_fail("fd 10: timerfd_gettime: %s", strerror(errno));
	else {
		int64_t left = ts_ns(cur.it_value);
		if (left <= 0 || left > 60000000000LL - before_ready)
			wl_fail("fd 10: %lld ns left, expected at most 60 s - %lld ns", (long long)left,
				(long long)before_ready);
		if (left < 60000000000LL - elapsed - 1000000000LL)
			wl_fail("fd 10: %lld ns left, less than 60 s minus the %lld ns since it was set",
				(long long)left, (long long)elapsed);
		if (ts_ns(cur.it_interval) != 0)
			wl_fail("fd 10: the one-shot timer has an interval");
	}
	expect_nonblock(11, 1);
	if (timerfd_gettime(11, &cur) != 0 || ts_ns(cur.it_interval) != 20000000 || ts_ns(cur.it_value) <= 0 ||
	    ts_ns(cur.it_value) > 20000000)
		wl_fail("fd 11: interval %lld ns value %lld ns, expected a 20 ms periodic timer",
			(long long)ts_ns(cur.it_interval), (long long)ts_ns(cur.it_value));
	uint64_t ticks = 0;
	struct pollfd p = { 11, POLLIN, 0 };
	poll(&p, 1, 1000);
	if (read(11, &ticks, 8) != 8 || ticks < 1)
		wl_fail("fd 11: the periodic timer does not expire");
	long long cl = fdinfo_num(12, "clockid:", 10), fl = fdinfo_num(12, "settime flags:", 8);
	if (cl != CLOCK_REALTIME || fl != 3)
		wl_fail("fd 12: fdinfo clockid %lld settime flags %llo, expected 0 and 03", cl, fl);
	if (timerfd_gettime(12, &cur) != 0)
		wl_fail("fd 12: timerfd_gettime: %s", strerror(errno));
	else {
		int64_t want = rt_deadline - now_ns(CLOCK_REALTIME), left = ts_ns(cur.it_value);
		if (left < want - 1000000000LL || left > want + 1000000000LL)
			wl_fail("fd 12: %lld ns left, expected %lld (the absolute deadline)", (long long)left,
				(long long)want);
	}
	if (fdinfo_num(13, "clockid:", 10) != CLOCK_BOOTTIME)
		wl_fail("fd 13: not a CLOCK_BOOTTIME timer");
	if (timerfd_gettime(13, &cur) != 0 || ts_ns(cur.it_value) != 0)
		wl_fail("fd 13: the expired one-shot timer is armed again");
	fcntl(13, F_SETFL, O_NONBLOCK);
	ticks = 0;
	if (read(13, &ticks, 8) != 8 || ticks != 1)
		wl_fail("fd 13: read %llu expirations (%s), expected the 1 unread one", (unsigned long long)ticks,
			strerror(errno));
	/* Absolute on CLOCK_MONOTONIC: the time left is kept (the clock may
	 * differ after a restore); the flag too. */
	if (fdinfo_num(14, "settime flags:", 8) != 1)
		wl_fail("fd 14: TFD_TIMER_ABSTIME is lost");
	if (timerfd_gettime(14, &cur) != 0 || ts_ns(cur.it_interval) != 1000000000LL)
		wl_fail("fd 14: interval is not 1 s");
	else {
		int64_t left = ts_ns(cur.it_value), most = mono_deadline - timer_ready_at;
		if (left <= 0 || left > most || left < most - elapsed - 1000000000LL)
			wl_fail("fd 14: %lld ns left, expected at most %lld", (long long)left, (long long)most);
	}
	wl_pass_note("timerfds=5");
}

/* ---- signalfd --------------------------------------------------------- */

static void signalfd_setup(void)
{
	sigset_t m, one, rt;
	sigemptyset(&m);
	sigaddset(&m, SIGUSR1);
	sigaddset(&m, SIGUSR2);
	sigaddset(&m, SIGRTMIN + 2);
	must(sigprocmask(SIG_BLOCK, &m, NULL) == 0, "sigprocmask");
	sigemptyset(&one);
	sigaddset(&one, SIGUSR1);
	sigaddset(&one, SIGUSR2);
	at(10, signalfd(-1, &one, SFD_NONBLOCK));
	sigemptyset(&rt);
	sigaddset(&rt, SIGRTMIN + 2);
	at(11, signalfd(-1, &rt, 0));
	must(raise(SIGUSR1) == 0, "raise");
	union sigval v = { .sival_int = 4242 };
	must(sigqueue(getpid(), SIGRTMIN + 2, v) == 0, "sigqueue");
}

static void signalfd_check(void)
{
	struct signalfd_siginfo si;
	expect_link(10, "anon_inode:[signalfd]");
	expect_nonblock(10, 1);
	expect_nonblock(11, 0);
	unsigned long long want10 = 1ULL << (SIGUSR1 - 1) | 1ULL << (SIGUSR2 - 1), want11 = 1ULL << (SIGRTMIN + 2 - 1);
	long long m10 = fdinfo_num(10, "sigmask:", 16), m11 = fdinfo_num(11, "sigmask:", 16);
	if (m10 != (long long)want10)
		wl_fail("fd 10: sigmask %llx, expected %llx", m10, want10);
	if (m11 != (long long)want11)
		wl_fail("fd 11: sigmask %llx, expected %llx", m11, want11);
	if (read(10, &si, sizeof(si)) != sizeof(si) || si.ssi_signo != (uint32_t)SIGUSR1)
		wl_fail("fd 10: the pending SIGUSR1 was not read");
	if (read(10, &si, sizeof(si)) != -1 || errno != EAGAIN)
		wl_fail("fd 10: a second read did not fail with EAGAIN");
	raise(SIGUSR2);
	if (read(10, &si, sizeof(si)) != sizeof(si) || si.ssi_signo != (uint32_t)SIGUSR2)
		wl_fail("fd 10: a SIGUSR2 raised after the restore was not read");
	if (read(11, &si, sizeof(si)) != sizeof(si) || si.ssi_signo != (uint32_t)(SIGRTMIN + 2) ||
	    si.ssi_int != 4242)
		wl_fail("fd 11: the queued SIGRTMIN+2 with value 4242 was not read");
	wl_pass_note("signalfds=2");
}

/* ---- epoll ------------------------------------------------------------ */

struct watch {
	int tfd;
	unsigned events;
	unsigned long long data;
};
static struct watch watches_before[16];
static int nwatches_before;

static int read_watches(int epfd, struct watch *w, int max)
{
	static char buf[16384];
	fdinfo(epfd, buf, sizeof(buf));
	int n = 0;
	for (char *p = strstr(buf, "tfd:"); p && n < max; p = strstr(p + 1, "tfd:")) {
		if (sscanf(p, "tfd: %d events: %x data: %llx", &w[n].tfd, &w[n].events, &w[n].data) == 3)
			n++;
	}
	/* Sort by fd number: the kernel's order is its own. */
	for (int i = 1; i < n; i++)
		for (int j = i; j > 0 && w[j].tfd < w[j - 1].tfd; j--) {
			struct watch t = w[j];
			w[j] = w[j - 1];
			w[j - 1] = t;
		}
	return n;
}

static void epoll_add(int ep, int fd, unsigned events, unsigned long long data)
{
	struct epoll_event ev = { .events = events, .data.u64 = data };
	must(epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) == 0, "epoll_ctl ADD");
}

static volatile int waiter_done;
static volatile unsigned long long waiter_data;
static pthread_t waiter;
static volatile pid_t waiter_tid;

/* Blocks in epoll_wait on fd 17 until the eventfd at fd 18 is written. */
static void *epoll_waiter(void *arg)
{
	(void)arg;
	struct epoll_event ev;
	int n;
	sigset_t term;
	sigemptyset(&term);
	sigaddset(&term, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &term, NULL); /* SIGTERM is the main thread's */
	waiter_tid = (pid_t)syscall(SYS_gettid);
	do
		n = epoll_wait(17, &ev, 1, -1);
	while (n < 0 && errno == EINTR);
	waiter_data = n == 1 ? ev.data.u64 : 0;
	waiter_done = n == 1 ? 1 : -1;
	return NULL;
}

static void epoll_setup(void)
{
	at(11, eventfd(1, 0));
	int p[2];
	must(pipe(p) == 0, "pipe");
	at(12, p[0]);
	at(13, p[1]);
	must(write(13, "x", 1) == 1, "pipe write");
	at(14, eventfd(1, 0));
	at(15, epoll_create1(0));
	epoll_add(15, 11, EPOLLIN, 0x15);
	at(16, eventfd(0, 0));
	at(10, epoll_create1(EPOLL_CLOEXEC));
	fcntl(10, F_SETFD, FD_CLOEXEC); /* dup2 drops it */
	epoll_add(10, 11, EPOLLIN, 0x1111);
	epoll_add(10, 12, EPOLLIN | EPOLLET, 0x2222);
	epoll_add(10, 13, EPOLLOUT, 0xdeadbeefcafef00dULL);
	epoll_add(10, 14, EPOLLIN | EPOLLONESHOT, 0x4444);
	epoll_add(10, 15, EPOLLIN, 0x5555);
	epoll_add(10, 16, EPOLLIN, 0x6666);
	/* Report once: the one-shot watch is disarmed, the edge consumed. */
	struct epoll_event evs[16];
	int n = epoll_wait(10, evs, 16, 0);
	must(n == 5, "first epoll_wait");
	nwatches_before = read_watches(10, watches_before, 16);
	must(nwatches_before == 6, "reading the watches");
	at(18, eventfd(0, 0));
	at(17, epoll_create1(0));
	epoll_add(17, 18, EPOLLIN, 0x1818);
	must(pthread_create(&waiter, NULL, epoll_waiter, NULL) == 0, "pthread_create");
	/* Ready once the thread sleeps in epoll_wait. */
	for (int i = 0;; i++) {
		char path[64], buf[64] = "";
		snprintf(path, sizeof(path), "/proc/self/task/%d/syscall", (int)waiter_tid);
		int f = waiter_tid ? open(path, O_RDONLY | O_CLOEXEC) : -1;
		if (f >= 0) {
			(void)!read(f, buf, sizeof(buf) - 1);
			close(f);
		}
		long nr = strtol(buf, NULL, 10);
		if (buf[0] && (nr == SYS_epoll_wait || nr == SYS_epoll_pwait))
			break;
		must(i < 5000, "waiting for the thread to block in epoll_wait");
		wl_sleep_ms(1);
	}
}

/* The data of the events epoll_wait reports now, as a bit set of known values. */
static unsigned ready_set(int ep)
{
	static const unsigned long long known[] = { 0x1111, 0x2222, 0xdeadbeefcafef00dULL, 0x4444, 0x5555, 0x6666 };
	struct epoll_event evs[16];
	int n = epoll_wait(ep, evs, 16, 0);
	unsigned set = 0;
	for (int i = 0; i < n; i++)
		for (unsigned k = 0; k < 6; k++)
			if (evs[i].data.u64 == known[k])
				set |= 1u << k;
	return set;
}

static void epoll_check(void)
{
	struct watch now[16];
	expect_link(10, "anon_inode:[eventpoll]");
	int fl = fcntl(10, F_GETFD);
	if (fl < 0 || !(fl & FD_CLOEXEC))
		wl_fail("fd 10: close-on-exec is lost");
	int n = read_watches(10, now, 16);
	if (n != nwatches_before)
		wl_fail("fd 10: %d watches, expected %d", n, nwatches_before);
	/* A one-shot watch that fired keeps only its flags. Adding a watch
	 * always sets EPOLLERR|EPOLLHUP, so a restored one has those too. */
	for (int i = 0; i < n && i < nwatches_before; i++)
		if (watches_before[i].tfd == 14 && watches_before[i].events == EPOLLONESHOT)
			now[i].events &= ~(unsigned)(EPOLLERR | EPOLLHUP);
	for (int i = 0; i < n && i < nwatches_before; i++)
		if (now[i].tfd != watches_before[i].tfd || now[i].events != watches_before[i].events ||
		    now[i].data != watches_before[i].data)
			wl_fail("fd 10: watch %d is fd %d events %x data %llx, was fd %d events %x data %llx", i,
				now[i].tfd, now[i].events, now[i].data, watches_before[i].tfd,
				watches_before[i].events, watches_before[i].data);
	/* 0x2222 is edge-triggered: whether it shows again is not checked. */
	unsigned set = ready_set(10) & ~2u;
	unsigned want = 1u << 0 | 1u << 2 | 1u << 4;
	if (set != want)
		wl_fail("fd 10: ready watches %#x, expected %#x (eventfd, pipe writer, nested epoll)", set, want);
	uint64_t v = 1;
	if (write(16, &v, 8) != 8 || !(ready_set(10) & 1u << 5))
		wl_fail("fd 10: the eventfd at fd 16 is not reported once it is ready");
	struct epoll_event ev = { .events = EPOLLIN | EPOLLONESHOT, .data.u64 = 0x4444 };
	if (epoll_ctl(10, EPOLL_CTL_MOD, 14, &ev) != 0 || !(ready_set(10) & 1u << 3))
		wl_fail("fd 10: re-arming the one-shot watch of fd 14 failed (%s)", strerror(errno));
	if (write(13, "y", 1) != 1 || !(ready_set(10) & 1u << 1))
		wl_fail("fd 10: new data in the pipe at fd 12 is not reported");
	if (epoll_ctl(10, EPOLL_CTL_DEL, 13, NULL) != 0)
		wl_fail("fd 10: removing the watch of fd 13 failed: %s", strerror(errno));
	struct epoll_event evs[4];
	if (epoll_wait(15, evs, 4, 0) != 1 || evs[0].data.u64 != 0x15)
		wl_fail("fd 15: the nested epoll does not report fd 11");
	if (waiter_done)
		wl_fail("the thread blocked in epoll_wait on fd 17 returned before its eventfd was written");
	v = 1;
	if (write(18, &v, 8) != 8)
		wl_fail("fd 18: write failed: %s", strerror(errno));
	for (int i = 0; i < 5000 && !waiter_done; i++)
		wl_sleep_ms(1);
	if (waiter_done != 1 || waiter_data != 0x1818)
		wl_fail("the thread blocked in epoll_wait on fd 17 did not wake with data 0x1818 (state %d, data %llx)",
			waiter_done, waiter_data);
	else
		pthread_join(waiter, NULL);
	wl_pass_note("watches=%d", n);
}

/* ---- memfd ------------------------------------------------------------ */

#define DATA_BYTES (3 * 4096 + 100)
#define PLAIN_BYTES (1 << 20)
#define MAPPED_BYTES (64 * 1024)
#define MAPONLY_BYTES (32 * 1024)
#define PRIV_BYTES (8 * 1024)

static unsigned char *mapped, *maponly, *priv;
static pid_t memchild;
static unsigned char mbuf[PLAIN_BYTES];

static void memfd_setup(void)
{
	at(10, memfd_create("stasis data", MFD_ALLOW_SEALING));
	wl_fill(mbuf, DATA_BYTES, 31);
	must(write(10, mbuf, DATA_BYTES) == DATA_BYTES, "write memfd");
	must(lseek(10, 777, SEEK_SET) == 777, "lseek");
	must(fcntl(10, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) == 0, "seal");
	at(11, memfd_create("plain", 0));
	must(ftruncate(11, PLAIN_BYTES) == 0, "ftruncate");
	must(pwrite(11, "hello", 5, PLAIN_BYTES / 2) == 5, "pwrite");
	at(12, open("/proc/self/fd/10", O_RDONLY));
	must(lseek(12, 5, SEEK_SET) == 5, "lseek 12");
	at(13, memfd_create("mapped", 0));
	must(ftruncate(13, MAPPED_BYTES) == 0, "ftruncate 13");
	mapped = mmap(NULL, MAPPED_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, 13, 0);
	must(mapped != MAP_FAILED, "mmap 13");
	wl_fill(mapped, MAPPED_BYTES, 33);
	int f = memfd_create("maponly", MFD_CLOEXEC);
	must(f >= 0 && ftruncate(f, MAPONLY_BYTES) == 0, "memfd maponly");
	maponly = mmap(NULL, MAPONLY_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, f, 0);
	must(maponly != MAP_FAILED, "mmap maponly");
	close(f);
	wl_fill(maponly, MAPONLY_BYTES, 34);
	f = memfd_create("private", MFD_CLOEXEC);
	wl_fill(mbuf, PRIV_BYTES, 35);
	must(f >= 0 && write(f, mbuf, PRIV_BYTES) == PRIV_BYTES, "memfd private");
	priv = mmap(NULL, PRIV_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE, f, 0);
	must(priv != MAP_FAILED, "mmap private");
	close(f);
	priv[0] = 0xab;
	/* A child sharing the mappings writes into "maponly" when asked. */
	int req[2], ack[2];
	must(pipe(req) == 0 && pipe(ack) == 0, "pipe");
	pid_t ch = fork();
	must(ch >= 0, "fork");
	if (ch == 0) {
		char c;
		close(req[1]);
		close(ack[0]);
		while (read(req[0], &c, 1) == 1) {
			maponly[200] = (unsigned char)c;
			if (write(ack[1], &c, 1) != 1)
				_exit(2);
		}
		_exit(0);
	}
	close(req[0]);
	close(ack[1]);
	at(20, req[1]);
	at(21, ack[0]);
	memchild = ch;
}

static int maps_has(const void *addr, const char *path)
{
	static char buf[1 << 16];
	int f = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
	ssize_t n = 0, r;
	while (f >= 0 && (r = read(f, buf + n, sizeof(buf) - 1 - (size_t)n)) > 0)
		n += r;
	if (f >= 0)
		close(f);
	buf[n] = 0;
	char want[64];
	snprintf(want, sizeof(want), "%lx-", (unsigned long)addr);
	for (char *l = buf; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL)
		if (!strncmp(l, want, strlen(want))) {
			char *e = strchr(l, '\n');
			if (e)
				*e = 0;
			int ok = strstr(l, path) != NULL;
			if (e)
				*e = '\n';
			return ok;
		}
	return 0;
}

static void memfd_check(void)
{
	struct stat st, st12;
	expect_link(10, "/memfd:stasis data (deleted)");
	expect_link(11, "/memfd:plain (deleted)");
	expect_link(12, "/memfd:stasis data (deleted)");
	if (lseek(10, 0, SEEK_CUR) != 777)
		wl_fail("fd 10: offset %lld, expected 777", (long long)lseek(10, 0, SEEK_CUR));
	if (fstat(10, &st) != 0 || st.st_size != DATA_BYTES)
		wl_fail("fd 10: %lld bytes, expected %d", (long long)st.st_size, DATA_BYTES);
	else if (pread(10, mbuf, DATA_BYTES, 0) != DATA_BYTES)
		wl_fail("fd 10: cannot read its data");
	else
		wl_expect("memfd \"stasis data\"", mbuf, DATA_BYTES, 31);
	int seals = fcntl(10, F_GET_SEALS);
	if (seals != (F_SEAL_SHRINK | F_SEAL_GROW))
		wl_fail("fd 10: seals %#x, expected %#x", seals, F_SEAL_SHRINK | F_SEAL_GROW);
	if (ftruncate(10, 100) == 0 || errno != EPERM)
		wl_fail("fd 10: shrinking the sealed memfd did not fail with EPERM");
	seals = fcntl(11, F_GET_SEALS);
	if (seals != F_SEAL_SEAL)
		wl_fail("fd 11: seals %#x, expected F_SEAL_SEAL (created without MFD_ALLOW_SEALING)", seals);
	char hello[6] = "";
	if (fstat(11, &st) != 0 || st.st_size != PLAIN_BYTES || pread(11, hello, 5, PLAIN_BYTES / 2) != 5 ||
	    strcmp(hello, "hello"))
		wl_fail("fd 11: size %lld, \"%s\" at 512 KiB, expected 1 MiB and hello", (long long)st.st_size,
			hello);
	if (pread(11, mbuf, PLAIN_BYTES, 0) == PLAIN_BYTES)
		for (size_t i = 0; i < PLAIN_BYTES; i++)
			if (mbuf[i] && (i < PLAIN_BYTES / 2 || i >= PLAIN_BYTES / 2 + 5)) {
				wl_fail("fd 11: byte %zu of the hole is %#x", i, mbuf[i]);
				break;
			}
	if ((fcntl(12, F_GETFL) & O_ACCMODE) != O_RDONLY || lseek(12, 0, SEEK_CUR) != 5)
		wl_fail("fd 12: not read-only at offset 5");
	if (fstat(12, &st12) != 0 || fstat(10, &st) != 0 || st.st_ino != st12.st_ino)
		wl_fail("fds 10 and 12 are not the same memfd");
	lseek(12, 99, SEEK_SET);
	if (lseek(10, 0, SEEK_CUR) != 777)
		wl_fail("fds 10 and 12 share their offset: they should be two descriptions");
	wl_expect("shared mapping of memfd \"mapped\"", mapped, MAPPED_BYTES, 33);
	mapped[100] = 0x5a;
	unsigned char c = 0;
	if (pread(13, &c, 1, 100) != 1 || c != 0x5a)
		wl_fail("the shared mapping is no longer the memfd at fd 13");
	if (!maps_has(mapped, "/memfd:mapped (deleted)"))
		wl_fail("the mapping at %p is not /memfd:mapped", (void *)mapped);
	wl_expect("shared mapping of memfd \"maponly\"", maponly, MAPONLY_BYTES, 34);
	if (!maps_has(maponly, "/memfd:maponly (deleted)"))
		wl_fail("the mapping at %p is not /memfd:maponly", (void *)maponly);
	char ask = 0x77;
	if (write(20, &ask, 1) != 1 || read(21, &ask, 1) != 1 || maponly[200] != 0x77)
		wl_fail("the child's write into memfd \"maponly\" is not seen: the mapping is not shared any more");
	close(20);
	waitpid(memchild, NULL, 0);
	if (priv[0] != 0xab)
		wl_fail("private memfd mapping: the changed byte is %#x", priv[0]);
	wl_expect_from("private memfd mapping", priv + 1, PRIV_BYTES - 1, 35, 1);
	if (!maps_has(priv, "/memfd:private (deleted)"))
		wl_fail("the mapping at %p is not /memfd:private", (void *)priv);
	wl_pass_note("memfds=5");
}

/* ---- locks ------------------------------------------------------------ */

static pid_t locker;

static int open_in_dir(const char *name, int flags)
{
	char p[4096];
	wl_path(p, sizeof(p), name);
	return open(p, flags | O_CLOEXEC, 0644);
}

static int setlk(int fd, int cmd, short type, off_t start, off_t len)
{
	struct flock fl = { .l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len };
	return fcntl(fd, cmd, &fl);
}

/* F_GETLK or F_OFD_GETLK for a lock of `type` on [start, start+len). */
static struct flock getlk(int fd, int cmd, short type, off_t start, off_t len)
{
	struct flock fl = { .l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len };
	if (fcntl(fd, cmd, &fl) != 0)
		fl.l_type = -1;
	return fl;
}

static void locks_setup(void)
{
	at(10, open_in_dir("flock.dat", O_RDWR | O_CREAT));
	must(flock(10, LOCK_EX) == 0, "flock 10");
	at(11, open_in_dir("flock-sh.dat", O_RDWR | O_CREAT));
	must(flock(11, LOCK_SH) == 0, "flock 11");
	at(12, open_in_dir("ofd.dat", O_RDWR | O_CREAT));
	must(setlk(12, F_OFD_SETLK, F_WRLCK, 0, 100) == 0, "OFD lock");
	must(setlk(12, F_OFD_SETLK, F_RDLCK, 200, 0) == 0, "OFD lock 2");
	at(13, open_in_dir("posix.dat", O_RDWR | O_CREAT));
	must(setlk(13, F_SETLK, F_WRLCK, 10, 10) == 0, "POSIX lock");
	must(setlk(13, F_SETLK, F_RDLCK, 100, 0) == 0, "POSIX lock 2");
	int p[2];
	must(pipe(p) == 0, "pipe");
	locker = fork();
	must(locker >= 0, "fork");
	if (locker == 0) {
		close(p[0]);
		/* Closing any fd of the file would drop the lock: this one stays. */
		int f = open_in_dir("child.dat", O_RDWR | O_CREAT);
		if (f < 0 || setlk(f, F_SETLK, F_WRLCK, 0, 0) != 0)
			_exit(2);
		if (write(p[1], "k", 1) != 1)
			_exit(2);
		close(p[1]);
		for (;;)
			pause();
	}
	close(p[1]);
	char k;
	must(read(p[0], &k, 1) == 1, "waiting for the locking child");
	close(p[0]);
}

/* Checks, from a new process, the POSIX locks the parent holds on
 * posix.dat; exits with a code saying which check failed. */
static int posix_checker(void)
{
	int f = open_in_dir("posix.dat", O_RDWR);
	if (f < 0)
		return 10;
	struct flock a = getlk(f, F_GETLK, F_WRLCK, 12, 1);
	if (a.l_type != F_WRLCK || a.l_pid != getppid() || a.l_start != 10 || a.l_len != 10)
		return 11;
	struct flock b = getlk(f, F_GETLK, F_WRLCK, 500, 1);
	if (b.l_type != F_RDLCK || b.l_pid != getppid() || b.l_start != 100 || b.l_len != 0)
		return 12;
	struct flock c = getlk(f, F_GETLK, F_RDLCK, 150, 1);
	if (c.l_type != F_UNLCK)
		return 13;
	struct flock d = getlk(f, F_GETLK, F_WRLCK, 50, 10);
	if (d.l_type != F_UNLCK)
		return 14;
	return 0;
}

static void locks_check(void)
{
	/* flock and OFD locks conflict between descriptions, even in one process. */
	int f = open_in_dir("flock.dat", O_RDWR);
	if (f < 0 || flock(f, LOCK_SH | LOCK_NB) == 0 || errno != EWOULDBLOCK)
		wl_fail("fd 10: its flock LOCK_EX is gone (another description could lock the file)");
	if (f >= 0)
		close(f);
	f = open_in_dir("flock-sh.dat", O_RDWR);
	if (f < 0 || flock(f, LOCK_SH | LOCK_NB) != 0)
		wl_fail("fd 11: a shared flock is refused (%s)", strerror(errno));
	else if (flock(f, LOCK_EX | LOCK_NB) == 0 || errno != EWOULDBLOCK)
		wl_fail("fd 11: its flock LOCK_SH is gone (another description could lock the file exclusively)");
	if (f >= 0)
		close(f);
	f = open_in_dir("ofd.dat", O_RDWR);
	struct flock a = getlk(f, F_OFD_GETLK, F_RDLCK, 50, 1);
	struct flock b = getlk(f, F_OFD_GETLK, F_RDLCK, 150, 1);
	struct flock c = getlk(f, F_OFD_GETLK, F_WRLCK, 300, 1);
	struct flock d = getlk(f, F_OFD_GETLK, F_RDLCK, 300, 1);
	if (a.l_type != F_WRLCK || a.l_start != 0 || a.l_len != 100 || a.l_pid != -1)
		wl_fail("fd 12: OFD write lock on bytes 0-99 not found (type %d start %lld len %lld pid %d)", a.l_type,
			(long long)a.l_start, (long long)a.l_len, a.l_pid);
	if (b.l_type != F_UNLCK || d.l_type != F_UNLCK)
		wl_fail("fd 12: unexpected OFD locks on bytes 150 or a read lock conflict at 300");
	if (c.l_type != F_RDLCK || c.l_start != 200 || c.l_len != 0)
		wl_fail("fd 12: OFD read lock from byte 200 to EOF not found");
	if (f >= 0)
		close(f);
	pid_t ch = fork();
	if (ch == 0)
		_exit(posix_checker());
	int st = 0;
	if (ch < 0 || waitpid(ch, &st, 0) != ch || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
		wl_fail("fd 13: the POSIX locks of this process are not as taken (check %d failed)",
			WIFEXITED(st) ? WEXITSTATUS(st) : -1);
	f = open_in_dir("child.dat", O_RDWR);
	struct flock e = getlk(f, F_GETLK, F_WRLCK, 0, 1);
	if (e.l_type != F_WRLCK || e.l_pid != locker)
		wl_fail("child.dat: lock type %d held by %d, expected a write lock of the child %d", e.l_type, e.l_pid,
			locker);
	if (f >= 0)
		close(f);
	kill(locker, SIGKILL);
	waitpid(locker, NULL, 0);
	wl_pass_note("locks=6");
}

/* ---- inotify ---------------------------------------------------------- */

static char tmp_watch[256];

static void mkdir_in(const char *name)
{
	char p[4096];
	wl_path(p, sizeof(p), name);
	must(mkdir(p, 0755) == 0 || errno == EEXIST, "mkdir");
}

static int watch_in(const char *name, uint32_t mask)
{
	char p[4096];
	wl_path(p, sizeof(p), name);
	return inotify_add_watch(10, p, mask);
}

static void drain(int fd)
{
	char buf[4096];
	while (read(fd, buf, sizeof(buf)) > 0)
		;
}

static void inotify_setup(void)
{
	mkdir_in("w1");
	mkdir_in("w2");
	mkdir_in("w3");
	int f = open_in_dir("w2/file", O_RDWR | O_CREAT);
	must(f >= 0, "w2/file");
	close(f);
	snprintf(tmp_watch, sizeof(tmp_watch), "/tmp/stasis-inotify-%d", (int)getpid());
	must(mkdir(tmp_watch, 0755) == 0 || errno == EEXIST, "mkdir in /tmp");
	at(10, inotify_init1(IN_NONBLOCK));
	must(watch_in("w1", IN_CREATE | IN_DELETE) == 1, "watch 1");
	must(watch_in("w2/file", IN_MODIFY) == 2, "watch 2");
	must(watch_in("w3", IN_CREATE) == 3, "watch 3");
	must(inotify_rm_watch(10, 3) == 0, "rm watch 3");
	must(inotify_add_watch(10, tmp_watch, IN_CREATE) == 4, "watch 4");
	must(watch_in("w3", IN_CREATE | IN_ONESHOT) == 5, "watch 5");
	drain(10);
}

/* Reads one event: its wd, mask and name. */
static int next_event(int *wd, uint32_t *mask, char *name, size_t size)
{
	static char buf[4096] __attribute__((aligned(8)));
	static ssize_t have, at_;
	if (at_ >= have) {
		have = read(10, buf, sizeof(buf));
		at_ = 0;
		if (have <= 0) {
			have = 0;
			return 0;
		}
	}
	struct inotify_event *e = (struct inotify_event *)(buf + at_);
	*wd = e->wd;
	*mask = e->mask;
	snprintf(name, size, "%s", e->len ? e->name : "");
	at_ += (ssize_t)sizeof(*e) + e->len;
	return 1;
}

static void expect_event(const char *what, int wd, uint32_t mask, const char *name)
{
	int gw;
	uint32_t gm;
	char gn[256];
	if (!next_event(&gw, &gm, gn, sizeof(gn)))
		wl_fail("inotify: no event after %s", what);
	else if (gw != wd || !(gm & mask) || strcmp(gn, name))
		wl_fail("inotify: after %s got wd %d mask %#x name \"%s\", expected wd %d mask %#x name \"%s\"", what,
			gw, gm, gn, wd, mask, name);
}

static void inotify_check(void)
{
	expect_link(10, "anon_inode:inotify");
	expect_nonblock(10, 1);
	static char buf[8192];
	fdinfo(10, buf, sizeof(buf));
	int wds[8], n = 0;
	for (char *p = strstr(buf, "inotify wd:"); p && n < 8; p = strstr(p + 1, "inotify wd:"))
		wds[n++] = (int)strtol(p + 11, NULL, 16);
	int mask1 = 0, seen[6] = { 0 };
	for (int i = 0; i < n; i++)
		if (wds[i] > 0 && wds[i] < 6)
			seen[wds[i]] = 1;
	char *w1 = strstr(buf, "inotify wd:1 ");
	if (w1 && (w1 = strstr(w1, "mask:")))
		mask1 = (int)strtol(w1 + 5, NULL, 16);
	if (n != 4 || !seen[1] || !seen[2] || seen[3] || !seen[4] || !seen[5])
		wl_fail("inotify: %d watches, expected wds 1, 2, 4 and 5", n);
	if (mask1 != (IN_CREATE | IN_DELETE))
		wl_fail("inotify: wd 1 has mask %#x, expected %#x", mask1, IN_CREATE | IN_DELETE);
	int f = open_in_dir("w1/new", O_RDWR | O_CREAT);
	if (f >= 0)
		close(f);
	expect_event("creating w1/new", 1, IN_CREATE, "new");
	f = open_in_dir("w2/file", O_RDWR);
	if (f < 0 || write(f, "z", 1) != 1)
		wl_fail("cannot write w2/file");
	if (f >= 0)
		close(f);
	expect_event("writing w2/file", 2, IN_MODIFY, "");
	char p[512];
	snprintf(p, sizeof(p), "%s/sub", tmp_watch);
	if (mkdir(p, 0755) != 0)
		wl_fail("mkdir %s: %s", p, strerror(errno));
	expect_event("mkdir in /tmp", 4, IN_CREATE, "sub");
	rmdir(p);
	f = open_in_dir("w3/a", O_RDWR | O_CREAT);
	if (f >= 0)
		close(f);
	expect_event("creating w3/a", 5, IN_CREATE, "a");
	expect_event("the one-shot watch fired", 5, IN_IGNORED, "");
	mkdir_in("w4");
	int wd = watch_in("w4", IN_CREATE);
	if (wd != 6)
		wl_fail("inotify: a new watch got wd %d, expected 6", wd);
	rmdir(tmp_watch);
	wl_pass_note("watches=%d", n);
}

/* ---- pidfd ------------------------------------------------------------ */

static pid_t pchild, zchild;

static int pidfd_open(pid_t pid, unsigned flags)
{
	return (int)syscall(SYS_pidfd_open, pid, flags);
}

static void pidfd_setup(void)
{
	pchild = fork();
	must(pchild >= 0, "fork");
	if (pchild == 0) {
		for (;;)
			pause();
	}
	at(10, pidfd_open(pchild, 0));
	at(11, pidfd_open(getpid(), PIDFD_NONBLOCK));
	at(12, dup(10));
	zchild = fork();
	must(zchild >= 0, "fork");
	if (zchild == 0)
		_exit(7);
	siginfo_t si;
	memset(&si, 0, sizeof(si));
	must(waitid(P_PID, (id_t)zchild, &si, WEXITED | WNOWAIT) == 0, "waiting for the zombie");
	at(13, pidfd_open(zchild, 0));
	/* fd 14: a pidfd of a child that has exited and was reaped. */
	pid_t gone = fork();
	must(gone >= 0, "fork");
	if (gone == 0)
		_exit(0);
	at(14, pidfd_open(gone, 0));
	must(waitpid(gone, NULL, 0) == gone, "reaping the child");
}

static void pidfd_check(void)
{
	expect_link(10, "anon_inode:[pidfd]");
	long long p10 = fdinfo_num(10, "Pid:", 10), p11 = fdinfo_num(11, "Pid:", 10);
	if (p10 != pchild)
		wl_fail("fd 10: pidfd of %lld, expected the child %d", p10, (int)pchild);
	if (p11 != getpid())
		wl_fail("fd 11: pidfd of %lld, expected this process %d", p11, (int)getpid());
	expect_nonblock(11, 1);
	expect_nonblock(10, 0);
	fcntl(10, F_SETFL, O_NONBLOCK);
	expect_nonblock(12, 1);
	if (syscall(SYS_pidfd_send_signal, 12, SIGKILL, NULL, 0) != 0)
		wl_fail("fd 12: pidfd_send_signal: %s", strerror(errno));
	struct pollfd pf = { 10, POLLIN, 0 };
	if (poll(&pf, 1, 5000) != 1)
		wl_fail("fd 10: the pidfd does not report the child's exit");
	siginfo_t si;
	memset(&si, 0, sizeof(si));
	if (waitid((idtype_t)P_PIDFD, 10, &si, WEXITED) != 0 || si.si_pid != pchild || si.si_code != CLD_KILLED)
		wl_fail("fd 10: waitid(P_PIDFD) gave pid %d code %d, expected %d killed", si.si_pid, si.si_code,
			(int)pchild);
	memset(&si, 0, sizeof(si));
	if (fdinfo_num(13, "Pid:", 10) != zchild ||
	    waitid((idtype_t)P_PIDFD, 13, &si, WEXITED) != 0 || si.si_pid != zchild || si.si_code != CLD_EXITED ||
	    si.si_status != 7)
		wl_fail("fd 13: waitid(P_PIDFD) on the zombie gave pid %d code %d status %d, expected %d exited 7",
			si.si_pid, si.si_code, si.si_status, (int)zchild);
	if (fdinfo_num(14, "Pid:", 10) != -1)
		wl_fail("fd 14: the pidfd of a reaped child names pid %lld, not -1", fdinfo_num(14, "Pid:", 10));
	errno = 0;
	if (syscall(SYS_pidfd_send_signal, 14, 0, NULL, 0) == 0 || errno != ESRCH)
		wl_fail("fd 14: pidfd_send_signal to a reaped child: %s, expected ESRCH", strerror(errno));
	struct pollfd pg = { 14, POLLIN, 0 };
	if (poll(&pg, 1, 0) != 1)
		wl_fail("fd 14: the pidfd of a reaped child does not report its exit");
	wl_pass_note("pidfds=5");
}

/* ---- refusals --------------------------------------------------------- */

/* ---- locks held through mappings -------------------------------------- */

static unsigned char *mapflock, *mapofd, *mapsh, *perf;
static char perf_path[256];

/* Opens `path`, takes `lock` on it, maps `len` bytes shared with `prot`
 * and closes the fd: the mapping's description alone holds the lock. */
static unsigned char *map_locked(const char *path, size_t len, int prot, int (*lock)(int))
{
	int f = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	must(f >= 0 && ftruncate(f, (off_t)len) == 0, path);
	for (size_t i = 0; i < len; i += 512) {
		char b[32];
		int n = snprintf(b, sizeof(b), "%s@%zu", strrchr(path, '/') + 1, i);
		must(pwrite(f, b, (size_t)n, (off_t)i) == n, "filling a locked file");
	}
	must(lock(f) == 0, "taking a lock");
	unsigned char *m = mmap(NULL, len, prot, MAP_SHARED, f, 0);
	must(m != MAP_FAILED, "mapping a locked file");
	close(f);
	return m;
}

static int lock_ex(int f)
{
	return flock(f, LOCK_EX | LOCK_NB);
}

static int lock_sh(int f)
{
	return flock(f, LOCK_SH | LOCK_NB);
}

static int lock_ofd(int f)
{
	if (setlk(f, F_OFD_SETLK, F_WRLCK, 0, 100) != 0)
		return -1;
	return setlk(f, F_OFD_SETLK, F_RDLCK, 200, 0);
}

static void maplocks_setup(void)
{
	char p[4096];
	wl_path(p, sizeof(p), "maplock-flock.dat");
	mapflock = map_locked(p, 2 * WL_PAGE, PROT_READ | PROT_WRITE, lock_ex);
	memcpy(mapflock + WL_PAGE + 7, "written through the mapping", 27);
	wl_path(p, sizeof(p), "maplock-ofd.dat");
	mapofd = map_locked(p, WL_PAGE, PROT_READ, lock_ofd);
	/* The same shared flock held by two descriptions: fd 10's, and one
	 * that only a mapping keeps. */
	wl_path(p, sizeof(p), "maplock-sh.dat");
	mapsh = map_locked(p, WL_PAGE, PROT_READ, lock_sh);
	at(10, open_in_dir("maplock-sh.dat", O_RDONLY));
	must(flock(10, LOCK_SH | LOCK_NB) == 0, "flock of fd 10");
}

/* Run in a forked process: fails (exit code != 0) when it can take any of
 * the locks the parent holds through its mappings. */
static int maplocks_checker(void)
{
	int f = open_in_dir("maplock-flock.dat", O_RDWR);
	if (f < 0)
		return 10;
	if (flock(f, LOCK_SH | LOCK_NB) == 0 || errno != EWOULDBLOCK)
		return 11;
	close(f);
	f = open_in_dir("maplock-ofd.dat", O_RDWR);
	if (f < 0)
		return 12;
	struct flock a = getlk(f, F_OFD_GETLK, F_RDLCK, 50, 1);
	if (a.l_type != F_WRLCK || a.l_start != 0 || a.l_len != 100)
		return 13;
	struct flock b = getlk(f, F_OFD_GETLK, F_WRLCK, 300, 1);
	if (b.l_type != F_RDLCK || b.l_start != 200 || b.l_len != 0)
		return 14;
	struct flock c = getlk(f, F_OFD_GETLK, F_RDLCK, 300, 1);
	struct flock d = getlk(f, F_OFD_GETLK, F_WRLCK, 150, 10);
	if (c.l_type != F_UNLCK || d.l_type != F_UNLCK)
		return 15;
	if (setlk(f, F_OFD_SETLK, F_RDLCK, 0, 1) == 0 || setlk(f, F_SETLK, F_WRLCK, 250, 1) == 0)
		return 16;
	close(f);
	/* fd 10's shared flock is gone (closed before the fork): the mapping's
	 * still keeps an exclusive one out, and lets a shared one in. */
	f = open_in_dir("maplock-sh.dat", O_RDONLY);
	if (f < 0)
		return 17;
	if (flock(f, LOCK_EX | LOCK_NB) == 0 || errno != EWOULDBLOCK)
		return 18;
	if (flock(f, LOCK_SH | LOCK_NB) != 0)
		return 19;
	close(f);
	return 0;
}

/* Forks `check` and says which of its checks failed, if any. */
static void run_checker(const char *what, int (*check)(void))
{
	pid_t ch = fork();
	if (ch == 0)
		_exit(check());
	int st = 0;
	if (ch < 0 || waitpid(ch, &st, 0) != ch || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
		wl_fail("%s: another process could take the locks held through the mappings (check %d failed)",
			what, WIFEXITED(st) ? WEXITSTATUS(st) : -1);
}

/* The mapping shows the file: what the file held, what was written
 * through the mapping, and a write through the mapping now reaches the file. */
static void check_mapped_file(const char *name, const unsigned char *m, size_t len)
{
	int f = open_in_dir(name, O_RDWR);
	if (f < 0) {
		wl_fail("%s: cannot be opened (%s)", name, strerror(errno));
		return;
	}
	unsigned char buf[2 * 4096];
	if (len > sizeof(buf) || pread(f, buf, len, 0) != (ssize_t)len || memcmp(buf, m, len) != 0)
		wl_fail("%s: the mapping no longer shows the file", name);
	for (size_t i = 0; i < len; i += 512) {
		char b[32];
		int n = snprintf(b, sizeof(b), "%s@%zu", name, i);
		if (i != WL_PAGE && memcmp(m + i, b, (size_t)n) != 0)
			wl_fail("%s: byte %zu of the mapping is not the file's", name, i);
	}
	if (pwrite(f, "via-fd", 6, 300) != 6 || memcmp(m + 300, "via-fd", 6) != 0)
		wl_fail("%s: a write to the file does not show in the mapping (not shared)", name);
	close(f);
}

static void maplocks_check(void)
{
	close(10);
	run_checker("maplock-*.dat", maplocks_checker);
	if (memcmp(mapflock + WL_PAGE + 7, "written through the mapping", 27) != 0)
		wl_fail("maplock-flock.dat: what was written through the mapping is gone");
	check_mapped_file("maplock-flock.dat", mapflock, 2 * WL_PAGE);
	check_mapped_file("maplock-ofd.dat", mapofd, WL_PAGE);
}

static int hsperf_checker(void)
{
	int f = open(perf_path, O_RDWR | O_CLOEXEC);
	if (f < 0)
		return 10;
	if (flock(f, LOCK_EX | LOCK_NB) == 0 || errno != EWOULDBLOCK)
		return 11;
	close(f);
	return 0;
}

static void hsperf_setup(void)
{
	char user[64] = "root";
	if (getuid() != 0)
		snprintf(user, sizeof(user), "%u", (unsigned)getuid());
	char dir[128];
	snprintf(dir, sizeof(dir), "/tmp/hsperfdata_%s", user);
	must(mkdir(dir, 0755) == 0 || errno == EEXIST, "mkdir hsperfdata");
	snprintf(perf_path, sizeof(perf_path), "%s/%d", dir, (int)getpid());
	int f = open(perf_path, O_RDWR | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
	must(f >= 0, "creating the perf data file");
	must(flock(f, LOCK_EX | LOCK_NB) == 0, "flock of the perf data file");
	must(ftruncate(f, 32 * 1024) == 0, "ftruncate of the perf data file");
	perf = mmap(NULL, 32 * 1024, PROT_READ | PROT_WRITE, MAP_SHARED, f, 0);
	must(perf != MAP_FAILED, "mapping the perf data file");
	close(f);
	memcpy(perf, "\xca\xfe\xc0\xc0", 4);
	for (unsigned i = 1; i < 32 * 1024 / 8; i++)
		((uint64_t *)perf)[i] = i * 0x9e3779b97f4a7c15ULL;
}

static void hsperf_check(void)
{
	run_checker(perf_path, hsperf_checker);
	if (memcmp(perf, "\xca\xfe\xc0\xc0", 4) != 0)
		wl_fail("%s: the magic at the head of the mapping is gone", perf_path);
	for (unsigned i = 1; i < 32 * 1024 / 8; i++)
		if (((uint64_t *)perf)[i] != i * 0x9e3779b97f4a7c15ULL) {
			wl_fail("%s: counter %u of the mapping changed", perf_path, i);
			break;
		}
	int f = open(perf_path, O_RDONLY | O_CLOEXEC);
	uint64_t v = 0;
	((uint64_t *)perf)[7] = 0x5151;
	if (f < 0 || pread(f, &v, 8, 56) != 8 || v != 0x5151)
		wl_fail("%s: a write through the mapping does not reach the file", perf_path);
	if (f >= 0)
		close(f);
	unlink(perf_path);
}

static unsigned char *maplock;

static void refuse_setup(const char *kind)
{
	if (!strcmp(kind, "refuse-pidfd")) {
		at(9, pidfd_open(1, 0));
	} else if (!strcmp(kind, "refuse-epoll")) {
		at(5, eventfd(1, 0));
		at(9, epoll_create1(0));
		epoll_add(9, 5, EPOLLIN, 0x77);
		at(6, dup(5));
		close(5);
	} else if (!strcmp(kind, "refuse-uffd")) {
		at(9, (int)syscall(SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY));
		struct uffdio_api api = { .api = UFFD_API };
		must(ioctl(9, UFFDIO_API, &api) == 0, "UFFDIO_API");
	} else if (!strcmp(kind, "refuse-inotify")) {
		mkdir_in("w1");
		at(10, inotify_init1(IN_NONBLOCK));
		must(watch_in("w1", IN_CREATE) == 1, "watch");
		int f = open_in_dir("w1/pending", O_RDWR | O_CREAT);
		must(f >= 0, "creating w1/pending");
		close(f);
		at(9, 10);
	} else if (!strcmp(kind, "pty")) {
		at(9, posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC));
		must(grantpt(9) == 0 && unlockpt(9) == 0, "unlockpt");
		at(8, open(ptsname(9), O_RDWR | O_NOCTTY | O_CLOEXEC));
	} else if (!strcmp(kind, "refuse-maplock")) {
		int f = memfd_create("maplock", MFD_CLOEXEC);
		must(f >= 0 && ftruncate(f, 4096) == 0 && flock(f, LOCK_EX) == 0, "maplock memfd");
		maplock = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, f, 0);
		must(maplock != MAP_FAILED, "mmap of the maplock memfd");
		close(f);
		memcpy(maplock, "locked", 6);
	} else {
		dprintf(2, "unknown mode %s\n", kind);
		exit(2);
	}
}

static void refuse_check(const char *kind)
{
	if (!strcmp(kind, "refuse-pidfd")) {
		if (fdinfo_num(9, "Pid:", 10) != 1 || syscall(SYS_pidfd_send_signal, 9, 0, NULL, 0) != 0)
			wl_fail("fd 9 is no longer a pidfd of PID 1");
	} else if (!strcmp(kind, "refuse-epoll")) {
		struct epoll_event ev;
		if (epoll_wait(9, &ev, 1, 0) != 1 || ev.data.u64 != 0x77)
			wl_fail("fd 9: the epoll no longer reports its eventfd");
	} else if (!strcmp(kind, "refuse-uffd")) {
		expect_link(9, "anon_inode:[userfaultfd]");
	} else if (!strcmp(kind, "pty")) {
		char b[8] = { 0 };
		if (write(9, "ping\n", 5) != 5 || read(8, b, sizeof(b)) != 5 || memcmp(b, "ping\n", 5) != 0)
			wl_fail("fds 8 and 9: the pty no longer passes data");
	} else if (!strcmp(kind, "refuse-maplock")) {
		char p[64];
		snprintf(p, sizeof(p), "/proc/self/map_files/%lx-%lx", (unsigned long)maplock,
			 (unsigned long)maplock + 4096);
		/* map_files opens a new description of the memfd; it takes
		 * CAP_CHECKPOINT_RESTORE, which a sandbox's workload may lack. */
		int f = open(p, O_RDWR | O_CLOEXEC);
		if (f < 0 && errno != EPERM)
			wl_fail("the memfd's mapping is gone (%s)", strerror(errno));
		else if (f >= 0 && (flock(f, LOCK_EX | LOCK_NB) == 0 || errno != EWOULDBLOCK))
			wl_fail("the memfd's flock held through the mapping is gone");
		if (f >= 0)
			close(f);
		if (memcmp(maplock, "locked", 6) != 0)
			wl_fail("the memfd's mapping lost its contents");
	} else {
		struct inotify_event e[4];
		if (read(9, e, sizeof(e)) < (ssize_t)sizeof(e[0]) || e[0].wd != 1 || !(e[0].mask & IN_CREATE))
			wl_fail("fd 9: the unread inotify event is gone");
	}
}

int main(int argc, char **argv)
{
	wl_init(argc, argv, 2);
	const char *mode = argv[1];
	/* The pty pair is set up and checked beside the refusals. */
	int refusal = !strncmp(mode, "refuse-", 7) || !strcmp(mode, "pty");
	if (!strcmp(mode, "eventfd"))
		eventfd_setup();
	else if (!strcmp(mode, "timerfd"))
		timerfd_setup();
	else if (!strcmp(mode, "signalfd"))
		signalfd_setup();
	else if (!strcmp(mode, "epoll"))
		epoll_setup();
	else if (!strcmp(mode, "memfd"))
		memfd_setup();
	else if (!strcmp(mode, "locks"))
		locks_setup();
	else if (!strcmp(mode, "inotify"))
		inotify_setup();
	else if (!strcmp(mode, "pidfd"))
		pidfd_setup();
	else if (!strcmp(mode, "maplocks"))
		maplocks_setup();
	else if (!strcmp(mode, "hsperf"))
		hsperf_setup();
	else if (refusal)
		refuse_setup(mode);
	else {
		dprintf(2, "usage: fds eventfd|timerfd|signalfd|epoll|memfd|locks|inotify|pidfd|maplocks|hsperf|refuse-* DIR\n");
		return 2;
	}
	wl_write("ready", "%s\n", mode);

	uint64_t count = 0;
	if (refusal) {
		while (!wl_term) {
			count++;
			if (count % 64 == 0)
				wl_write("count", "%llu\n", (unsigned long long)count);
			wl_sleep_ms(1);
		}
	} else {
		wl_wait_term();
	}

	if (wl_corrupt()) {
		uint64_t one = 1;
		struct epoll_event ev;
		if (!strcmp(mode, "eventfd"))
			must(write(10, &one, 8) == 8, "corrupting");
		else if (!strcmp(mode, "timerfd"))
			must(read(13, &one, 8) == 8, "corrupting");
		else if (!strcmp(mode, "signalfd")) {
			sigset_t m;
			sigemptyset(&m);
			sigaddset(&m, SIGUSR1);
			must(sigwaitinfo(&m, NULL) == SIGUSR1, "corrupting");
		} else if (!strcmp(mode, "epoll"))
			must(epoll_ctl(10, EPOLL_CTL_DEL, 11, &ev) == 0, "corrupting");
		else if (!strcmp(mode, "memfd"))
			maponly[10] ^= 1;
		else if (!strcmp(mode, "locks"))
			must(flock(10, LOCK_UN) == 0, "corrupting");
		else if (!strcmp(mode, "inotify"))
			must(inotify_rm_watch(10, 2) == 0, "corrupting");
		else if (!strcmp(mode, "pidfd"))
			at(10, open("/dev/null", O_RDONLY));
		else if (!strcmp(mode, "maplocks")) {
			/* The same file mapped again in place, through a new
			 * description: the old one, and its OFD locks, are gone. */
			int f = open_in_dir("maplock-ofd.dat", O_RDONLY);
			must(f >= 0 && mmap(mapofd, WL_PAGE, PROT_READ, MAP_SHARED | MAP_FIXED, f, 0) == mapofd,
			     "corrupting");
			close(f);
		}
		else if (!strcmp(mode, "hsperf"))
			perf[9] ^= 1;
		else if (!strcmp(mode, "refuse-pidfd") || !strcmp(mode, "refuse-uffd") || !strcmp(mode, "pty"))
			at(9, open("/dev/null", O_RDONLY));
		else if (!strcmp(mode, "refuse-epoll"))
			must(read(6, &one, 8) == 8, "corrupting");
		else if (!strcmp(mode, "refuse-inotify"))
			drain(9);
		else if (!strcmp(mode, "refuse-maplock")) {
			/* The memfd's mapping, and with it the lock, replaced. */
			must(mmap(maplock, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1,
				  0) == maplock,
			     "corrupting");
			memcpy(maplock, "locked", 6);
		}
	}

	if (!strcmp(mode, "eventfd"))
		eventfd_check();
	else if (!strcmp(mode, "timerfd"))
		timerfd_check();
	else if (!strcmp(mode, "signalfd"))
		signalfd_check();
	else if (!strcmp(mode, "epoll"))
		epoll_check();
	else if (!strcmp(mode, "memfd"))
		memfd_check();
	else if (!strcmp(mode, "locks"))
		locks_check();
	else if (!strcmp(mode, "inotify"))
		inotify_check();
	else if (!strcmp(mode, "pidfd"))
		pidfd_check();
	else if (!strcmp(mode, "maplocks"))
		maplocks_check();
	else if (!strcmp(mode, "hsperf"))
		hsperf_check();
	else {
		refuse_check(mode);
		wl_pass_note("count=%llu", (unsigned long long)count);
	}
	return wl_finish();
}
