/* Shared helpers of the test workloads.
 *
 * Protocol (docs: design notes, section 7): a workload gets a directory DIR,
 * builds its state, writes DIR/ready once the state is in place, waits for
 * SIGTERM, checks its state and writes DIR/verdict: "PASS" (optionally
 * followed by " key=value" words) or "FAIL: reason". It exits 0 on PASS and
 * 1 on FAIL. Every file is written atomically (a temporary file, then
 * rename), so the harness never reads half a file.
 *
 * STASIS_TEST_CORRUPT=1 in the environment makes a workload change one byte
 * (or one value) of its state after SIGTERM and before its checks, which
 * proves that the checks can fail. */
#ifndef WL_H
#define WL_H

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define WL_PAGE 4096UL
/* Not every workload uses every helper. */
#define WL_FN static __attribute__((unused))

static const char *wl_dir;
static volatile sig_atomic_t wl_term;
static char wl_failure[512];
static char wl_note[256];

/* A name for a temporary file: random, since two restored copies of one
 * image share their PIDs and all their memory, yet may write to DIR at once. */
WL_FN void wl_tmp_name(char *out, size_t size, const char *name)
{
	unsigned long long r = 0;
	if (getrandom(&r, sizeof(r), 0) != sizeof(r))
		r = (unsigned long long)getpid() << 32 ^ (unsigned long long)time(NULL);
	snprintf(out, size, "%s/.%s.tmp.%llx", wl_dir, name, r);
}

/* Writes DIR/name atomically. Uses no stdio, so it allocates nothing. */
WL_FN void wl_write(const char *name, const char *fmt, ...)
{
	char text[1024], tmp[4096], path[4096];
	va_list ap;
	va_start(ap, fmt);
	int len = vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	if (len < 0 || (size_t)len >= sizeof(text))
		len = (int)strlen(text);
	snprintf(path, sizeof(path), "%s/%s", wl_dir, name);
	wl_tmp_name(tmp, sizeof(tmp), name);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (fd < 0) {
		dprintf(2, "cannot create %s: %s\n", tmp, strerror(errno));
		_exit(2);
	}
	if (write(fd, text, (size_t)len) != len || close(fd) != 0 || rename(tmp, path) != 0) {
		dprintf(2, "cannot write %s: %s\n", path, strerror(errno));
		_exit(2);
	}
}

/* Reads DIR/name into buf (NUL-terminated, trailing newline removed).
 * Returns the length, or -1 when the file cannot be read. */
WL_FN int wl_read(const char *name, char *buf, size_t size)
{
	char path[4096];
	snprintf(path, sizeof(path), "%s/%s", wl_dir, name);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, buf, size - 1);
	close(fd);
	if (n < 0)
		return -1;
	while (n > 0 && buf[n - 1] == '\n')
		n--;
	buf[n] = 0;
	return (int)n;
}

/* Copies a file (such as /proc/self/maps) to DIR/name, atomically. */
WL_FN void wl_copy_to(const char *src, const char *name)
{
	static char buf[1 << 18];
	char tmp[4096], path[4096];
	int in = open(src, O_RDONLY | O_CLOEXEC);
	size_t len = 0;
	ssize_t r;
	while (in >= 0 && (r = read(in, buf + len, sizeof(buf) - len)) > 0)
		len += (size_t)r;
	if (in >= 0)
		close(in);
	snprintf(path, sizeof(path), "%s/%s", wl_dir, name);
	wl_tmp_name(tmp, sizeof(tmp), name);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (in < 0 || fd < 0 || write(fd, buf, len) != (ssize_t)len || close(fd) != 0 || rename(tmp, path) != 0) {
		dprintf(2, "cannot copy %s to %s: %s\n", src, path, strerror(errno));
		_exit(2);
	}
}

/* Joins DIR and name into out. */
WL_FN void wl_path(char *out, size_t size, const char *name)
{
	snprintf(out, size, "%s/%s", wl_dir, name);
}

WL_FN int wl_corrupt(void)
{
	const char *c = getenv("STASIS_TEST_CORRUPT");
	return c && *c && strcmp(c, "0") != 0;
}

/* Records a failed check; the first one is the verdict's reason. */
__attribute__((format(printf, 1, 2))) WL_FN void wl_fail(const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	dprintf(2, "check failed: %s\n", msg);
	if (!wl_failure[0])
		snprintf(wl_failure, sizeof(wl_failure), "%s", msg);
}

WL_FN int wl_failed(void)
{
	return wl_failure[0] != 0;
}

/* Extra words for a PASS verdict ("count=12"). */
__attribute__((format(printf, 1, 2))) WL_FN void wl_pass_note(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(wl_note, sizeof(wl_note), fmt, ap);
	va_end(ap);
}

/* Writes the verdict to DIR/<file> and returns the exit code. */
WL_FN int wl_finish_as(const char *file)
{
	if (wl_failed()) {
		wl_write(file, "FAIL: %s\n", wl_failure);
		return 1;
	}
	if (wl_note[0])
		wl_write(file, "PASS %s\n", wl_note);
	else
		wl_write(file, "PASS\n");
	return 0;
}

WL_FN int wl_finish(void)
{
	return wl_finish_as("verdict");
}

WL_FN void wl_on_term(int sig)
{
	(void)sig;
	wl_term = 1;
}

/* Reads the directory argument and installs the SIGTERM handler. */
WL_FN void wl_init(int argc, char **argv, int argi)
{
	if (argc <= argi) {
		dprintf(2, "usage: %s ... DIR\n", argv[0]);
		exit(2);
	}
	wl_dir = argv[argi];
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = wl_on_term;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGTERM, &sa, NULL) != 0) {
		perror("sigaction SIGTERM");
		exit(2);
	}
	/* Create the heap now, so that later allocations do not change the map. */
	free(malloc(64));
}

/* Sleeps until SIGTERM arrived (sigsuspend: no busy loop, no lost wake-up).
 * Other blocked signals stay blocked. */
WL_FN void wl_wait_term(void)
{
	sigset_t term, old, wait;
	sigemptyset(&term);
	sigaddset(&term, SIGTERM);
	sigprocmask(SIG_BLOCK, &term, &old);
	wait = old;
	sigdelset(&wait, SIGTERM);
	while (!wl_term)
		sigsuspend(&wait);
	sigprocmask(SIG_SETMASK, &old, NULL);
}

WL_FN void wl_sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

/* Pattern byte `i` of a buffer filled with `seed`: depends on both, so that
 * a page moved to another place or swapped with another area is noticed. */
static inline unsigned char wl_pat(size_t i, uint32_t seed)
{
	uint32_t x = (uint32_t)i * 2654435761u ^ seed * 40503u ^ (uint32_t)(i >> 12) * 97u;
	return (unsigned char)(x ^ x >> 13 ^ x >> 24);
}

WL_FN void wl_fill(void *p, size_t n, uint32_t seed)
{
	unsigned char *c = p;
	for (size_t i = 0; i < n; i++)
		c[i] = wl_pat(i, seed);
}

/* First offset that differs from the pattern, or -1. The buffer holds the
 * pattern's bytes from offset `from` on. */
WL_FN long wl_check_from(const void *p, size_t n, uint32_t seed, size_t from)
{
	const unsigned char *c = p;
	for (size_t i = 0; i < n; i++)
		if (c[i] != wl_pat(from + i, seed))
			return (long)i;
	return -1;
}

/* Checks a pattern (from offset `from`) and records a failure naming the area. */
WL_FN void wl_expect_from(const char *what, const void *p, size_t n, uint32_t seed, size_t from)
{
	long bad = wl_check_from(p, n, seed, from);
	if (bad >= 0)
		wl_fail("%s: byte %ld (page %ld) is %#x, expected %#x", what, bad, bad / (long)WL_PAGE,
			((const unsigned char *)p)[bad], wl_pat(from + (size_t)bad, seed));
}

WL_FN void wl_expect(const char *what, const void *p, size_t n, uint32_t seed)
{
	wl_expect_from(what, p, n, seed, 0);
}

/* ---- The memory map, as /proc/self/maps shows it ----------------------
 * Adjacent lines with the same permissions and backing are merged: whether
 * the kernel shows two touching areas as one line or two is not something a
 * program can rely on. [stack] is compared by its end only (it grows). */

struct wl_map {
	unsigned long start, end, off, ino;
	char perms[8];
	char path[256];
};

#define WL_MAPS_MAX 512
static char wl_maps_buf[1 << 17];

WL_FN int wl_maps_read(struct wl_map *m, int max)
{
	int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	size_t len = 0;
	for (;;) {
		ssize_t r = read(fd, wl_maps_buf + len, sizeof(wl_maps_buf) - 1 - len);
		if (r <= 0)
			break;
		len += (size_t)r;
	}
	close(fd);
	wl_maps_buf[len] = 0;
	int n = 0;
	for (char *line = wl_maps_buf; line && *line;) {
		char *next = strchr(line, '\n');
		if (next)
			*next++ = 0;
		struct wl_map cur;
		memset(&cur, 0, sizeof(cur));
		char dev[32];
		int used = 0;
		if (sscanf(line, "%lx-%lx %7s %lx %31s %lu %n", &cur.start, &cur.end, cur.perms, &cur.off, dev, &cur.ino,
			   &used) >= 6) {
			snprintf(cur.path, sizeof(cur.path), "%s", line + used);
			/* Shared anonymous memory is a new kernel object after a
			 * restore: the inode number the kernel gives it is not state. */
			if (!strncmp(cur.path, "/dev/zero (deleted)", 19))
				cur.ino = 0;
			struct wl_map *prev = n ? &m[n - 1] : NULL;
			int anon = cur.ino == 0;
			if (prev && prev->end == cur.start && !strcmp(prev->perms, cur.perms) &&
			    !strcmp(prev->path, cur.path) && prev->ino == cur.ino &&
			    (anon || prev->off + (prev->end - prev->start) == cur.off)) {
				prev->end = cur.end;
			} else if (n < max) {
				m[n++] = cur;
			}
		}
		line = next;
	}
	return n;
}

/* Compares two snapshots; records a failure naming the first difference. */
WL_FN void wl_maps_expect_same(const struct wl_map *a, int na, const struct wl_map *b, int nb)
{
	int i = 0, j = 0;
	while (i < na || j < nb) {
		if (i == na) {
			wl_fail("memory map: new area %lx-%lx %s %s", b[j].start, b[j].end, b[j].perms, b[j].path);
			return;
		}
		if (j == nb) {
			wl_fail("memory map: area %lx-%lx %s %s is gone", a[i].start, a[i].end, a[i].perms, a[i].path);
			return;
		}
		int stack = !strcmp(a[i].path, "[stack]") && !strcmp(b[j].path, "[stack]");
		if ((!stack && a[i].start != b[j].start) || a[i].end != b[j].end || strcmp(a[i].perms, b[j].perms) ||
		    strcmp(a[i].path, b[j].path) || a[i].off != b[j].off || a[i].ino != b[j].ino) {
			wl_fail("memory map: was %lx-%lx %s %lx %lu %s, now %lx-%lx %s %lx %lu %s", a[i].start, a[i].end,
				a[i].perms, a[i].off, a[i].ino, a[i].path, b[j].start, b[j].end, b[j].perms, b[j].off,
				b[j].ino, b[j].path);
			return;
		}
		i++;
		j++;
	}
}

#endif
