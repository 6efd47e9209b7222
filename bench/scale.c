/* Benchmark workload for how time grows: many areas, threads, processes or fds.
 *
 *   scale areas N READY_FILE VERDICT_FILE    N one-page private anonymous areas
 *                                            (one-page holes between them, so
 *                                            none merge), each page filled
 *   scale threads N READY_FILE VERDICT_FILE  N threads in all (the main one
 *                                            included), each waiting on a futex
 *                                            with a value of its own on its stack
 *   scale procs N READY_FILE VERDICT_FILE    a tree of N processes (the root,
 *                                            children of the root, and each of
 *                                            those with children of its own)
 *   scale fds N READY_FILE VERDICT_FILE      N open fds: eventfds with counts of
 *                                            their own, every other fd a dup of
 *                                            the one before it
 *
 * Builds the state, writes READY_FILE, then waits for SIGTERM. On SIGTERM the
 * root checks its state (and, for procs, has every process check its own and
 * report through its exit status) and writes "PASS <what>" or "FAIL: <reason>"
 * to VERDICT_FILE (written to a temporary name, then renamed). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *verdict;
static long n;
static char fail[256];

static int write_file(const char *path, const char *text)
{
	char tmp[4096];
	if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
		return -1;
	FILE *f = fopen(tmp, "w");
	if (!f)
		return -1;
	fputs(text, f);
	if (fclose(f) != 0)
		return -1;
	return rename(tmp, path);
}

static void die(const char *what)
{
	fprintf(stderr, "scale: %s: %s\n", what, strerror(errno));
	exit(2);
}

static void wait_term(void)
{
	sigset_t set;
	int sig;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigwait(&set, &sig);
}

static uint64_t value(uint64_t i)
{
	uint64_t x = (i + 1) * 0x9E3779B97F4A7C15ull;
	return x ^ (x >> 29);
}

/* ---- areas ---------------------------------------------------------------- */

static char *area_base;

static int areas(void)
{
	long page = sysconf(_SC_PAGESIZE);
	char *base = mmap(NULL, 2 * n * page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (base == MAP_FAILED)
		die("reserving the address range");
	if (munmap(base, 2 * n * page) != 0)
		die("munmap");
	for (long i = 0; i < n; i++) {
		uint64_t *p = mmap(base + 2 * i * page, page, PROT_READ | PROT_WRITE,
				   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
		if (p == MAP_FAILED)
			die("mapping an area");
		for (size_t w = 0; w < page / 8; w++)
			p[w] = value(i * 4096 + w);
	}
	area_base = base;
	return 0;
}

static int areas_check(void)
{
	long page = sysconf(_SC_PAGESIZE);
	char *end = area_base + 2 * n * page;
	/* Still N separate one-page areas (/proc/self/maps), with their contents. */
	FILE *m = fopen("/proc/self/maps", "r");
	if (!m)
		die("/proc/self/maps");
	char line[512];
	long found = 0;
	while (fgets(line, sizeof line, m)) {
		unsigned long s, e;
		char perms[5];
		if (sscanf(line, "%lx-%lx %4s", &s, &e, perms) != 3)
			continue;
		if ((char *)s < area_base || (char *)s >= end)
			continue;
		if (e - s != (unsigned long)page || strcmp(perms, "rw-p") != 0 ||
		    ((char *)s - area_base) % (2 * page) != 0) {
			snprintf(fail, sizeof fail, "unexpected area %lx-%lx %s", s, e, perms);
			fclose(m);
			return 1;
		}
		found++;
	}
	fclose(m);
	if (found != n) {
		snprintf(fail, sizeof fail, "%ld of %ld areas found", found, n);
		return 1;
	}
	for (long i = 0; i < n; i++) {
		uint64_t *p = (uint64_t *)(area_base + 2 * i * page);
		for (size_t w = 0; w < page / 8; w++) {
			if (p[w] != value(i * 4096 + w)) {
				snprintf(fail, sizeof fail, "area %ld word %zu differs", i, w);
				return 1;
			}
		}
	}
	return 0;
}

/* ---- threads -------------------------------------------------------------- */

static _Atomic uint32_t go;
static _Atomic long started, bad;

static void *thread_main(void *arg)
{
	uint64_t mine = value((uintptr_t)arg);
	atomic_fetch_add(&started, 1);
	while (atomic_load(&go) == 0)
		syscall(SYS_futex, &go, FUTEX_WAIT_PRIVATE, 0, NULL, NULL, 0);
	if (mine != value((uintptr_t)arg))
		atomic_fetch_add(&bad, 1);
	return NULL;
}

static pthread_t *tids;

static int threads(void)
{
	tids = calloc(n, sizeof *tids);
	pthread_attr_t a;
	pthread_attr_init(&a);
	pthread_attr_setstacksize(&a, 64 * 1024);
	for (long i = 1; i < n; i++)
		if ((errno = pthread_create(&tids[i], &a, thread_main, (void *)(uintptr_t)i)) != 0)
			die("pthread_create");
	while (atomic_load(&started) < n - 1)
		usleep(1000);
	return 0;
}

static int threads_check(void)
{
	atomic_store(&go, 1);
	syscall(SYS_futex, &go, FUTEX_WAKE_PRIVATE, INT32_MAX, NULL, NULL, 0);
	for (long i = 1; i < n; i++)
		pthread_join(tids[i], NULL);
	if (bad) {
		snprintf(fail, sizeof fail, "%ld threads saw their value change", (long)bad);
		return 1;
	}
	return 0;
}

/* ---- processes ------------------------------------------------------------ */

static pid_t kids[4096];
static long nkids;

/* A process of the tree: waits for SIGTERM, passes it to its children, and
 * exits 0 when its own value and every child's status are right. */
static void member(uint64_t id, int ready_fd)
{
	uint64_t mine = value(id);
	if (write(ready_fd, "x", 1) != 1)
		_exit(3);
	wait_term();
	int ok = mine == value(id);
	for (long i = 0; i < nkids; i++)
		kill(kids[i], SIGTERM);
	for (long i = 0; i < nkids; i++) {
		int st;
		if (waitpid(kids[i], &st, 0) != kids[i] || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
			ok = 0;
	}
	_exit(ok ? 0 : 1);
}

static int procs(void)
{
	/* The root forks sqrt(N) children; each forks its share of the rest. */
	long first = 1;
	while (first * first < n)
		first++;
	long rest = n - 1 - first, id = 1;
	int p[2];
	if (rest < 0) {
		first = n - 1;
		rest = 0;
	}
	if (pipe(p) != 0)
		die("pipe");
	for (long c = 0; c < first; c++) {
		long mine = rest / first + (c < rest % first);
		long my_id = id++;
		long child_base = id;
		id += mine;
		pid_t pid = fork();
		if (pid < 0)
			die("fork");
		if (pid == 0) {
			close(p[0]);
			nkids = 0;
			for (long g = 0; g < mine; g++) {
				pid_t q = fork();
				if (q < 0)
					die("fork");
				if (q == 0) {
					nkids = 0;
					member(child_base + g, p[1]);
				}
				kids[nkids++] = q;
			}
			member(my_id, p[1]);
		}
		kids[nkids++] = pid;
	}
	close(p[1]);
	char buf[256];
	long got = 0;
	while (got < n - 1) {
		ssize_t r = read(p[0], buf, sizeof buf);
		if (r <= 0)
			die("waiting for the tree");
		got += r;
	}
	close(p[0]);
	return 0;
}

static int procs_check(void)
{
	long failed = 0;
	for (long i = 0; i < nkids; i++)
		kill(kids[i], SIGTERM);
	for (long i = 0; i < nkids; i++) {
		int st;
		if (waitpid(kids[i], &st, 0) != kids[i] || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
			failed++;
	}
	if (failed) {
		snprintf(fail, sizeof fail, "%ld subtrees of the root failed their check", failed);
		return 1;
	}
	return 0;
}

/* ---- fds ------------------------------------------------------------------ */

static int fd_base;

static int fds(void)
{
	struct rlimit r;
	if (getrlimit(RLIMIT_NOFILE, &r) != 0)
		die("getrlimit");
	if (r.rlim_cur < (rlim_t)n + 64) {
		r.rlim_cur = r.rlim_max;
		if (r.rlim_cur < (rlim_t)n + 64) {
			errno = EMFILE;
			die("RLIMIT_NOFILE hard limit below N + 64");
		}
		if (setrlimit(RLIMIT_NOFILE, &r) != 0)
			die("setrlimit");
	}
	/* Nothing inherited in the way of the numbers used. */
	syscall(SYS_close_range, 3, ~0U, 0);
	fd_base = 16;
	for (long i = 0; i < n; i++) {
		int fd = fd_base + (int)i;
		/* Even: an eventfd counting i + 1, close-on-exec when i % 4 == 0;
		 * odd: a close-on-exec dup of the fd before it. */
		int f = (i % 2 == 0) ? eventfd((unsigned)(i + 1), 0) : fcntl(fd - 1, F_DUPFD_CLOEXEC, fd);
		if (f < 0)
			die("creating an fd");
		if (i % 2 == 0) {
			int g = fcntl(f, (i % 4 == 0) ? F_DUPFD_CLOEXEC : F_DUPFD, fd);
			if (g != fd || close(f) != 0)
				die("moving an fd");
		} else if (f != fd) {
			die("duplicating an fd");
		}
	}
	return 0;
}

static int fds_check(void)
{
	for (long i = 0; i < n; i += 2) {
		int fd = fd_base + (int)i;
		int want_cloexec = i % 4 == 0;
		int fl = fcntl(fd, F_GETFD);
		int fl2 = i + 1 < n ? fcntl(fd + 1, F_GETFD) : FD_CLOEXEC;
		if (fl < 0 || fl2 < 0 || !!(fl & FD_CLOEXEC) != want_cloexec || !(fl2 & FD_CLOEXEC)) {
			snprintf(fail, sizeof fail, "fd %d or %d: flags differ", fd, fd + 1);
			return 1;
		}
		if (i + 1 < n && syscall(SYS_kcmp, getpid(), getpid(), 0, fd, fd + 1) != 0) {
			snprintf(fail, sizeof fail, "fd %d is not a dup of fd %d any more", fd + 1, fd);
			return 1;
		}
		uint64_t v;
		if (read(fd, &v, 8) != 8 || v != (uint64_t)i + 1) {
			snprintf(fail, sizeof fail, "eventfd %d does not count %ld", fd, i + 1);
			return 1;
		}
	}
	return 0;
}

int main(int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: %s areas|threads|procs|fds N READY_FILE VERDICT_FILE\n", argv[0]);
		return 2;
	}
	const char *mode = argv[1], *ready = argv[3];
	n = strtol(argv[2], NULL, 10);
	verdict = argv[4];
	if (n < 1 || n > 1000000) {
		fprintf(stderr, "scale: N out of range\n");
		return 2;
	}
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigprocmask(SIG_BLOCK, &set, NULL);

	int (*check)(void);
	if (!strcmp(mode, "areas")) {
		areas();
		check = areas_check;
	} else if (!strcmp(mode, "threads")) {
		threads();
		check = threads_check;
	} else if (!strcmp(mode, "procs")) {
		if (n > 4096) {
			fprintf(stderr, "scale: at most 4096 processes\n");
			return 2;
		}
		procs();
		check = procs_check;
	} else if (!strcmp(mode, "fds")) {
		fds();
		check = fds_check;
	} else {
		fprintf(stderr, "scale: unknown mode %s\n", mode);
		return 2;
	}
	if (write_file(ready, "ready\n") != 0)
		die("writing the ready file");
	wait_term();
	char out[300];
	if (check() == 0)
		snprintf(out, sizeof out, "PASS %s %ld\n", mode, n);
	else
		snprintf(out, sizeof out, "FAIL: %s\n", fail);
	write_file(verdict, out);
	return out[0] == 'P' ? 0 : 1;
}
