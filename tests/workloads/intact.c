/* intact MODE MIB DIR: a workload that can tell whether anything was left
 * in it, for the tests of failed and interrupted dumps.
 *
 * At start, once its state is in place, it records its own memory map
 * (/proc/self/maps), the blocked-signal mask of every thread (SigBlk in
 * /proc/self/task/TID/status) and its fd table (numbers and what they are).
 * It keeps MIB MiB of memory that it changes all the time, with a running
 * checksum (the sum of all 64-bit words) kept up to date with each change.
 * A second thread with masks of its own counts in a sleep loop. On SIGTERM
 * it checks: the memory map, every thread's mask and the fd table are what
 * they were at start, no thread is traced (TracerPid 0), and the memory
 * matches the running checksum.
 *
 *   plain        just that
 *   uring-child  also a child process holding an io_uring instance (which a
 *                dump refuses): it is forked first, so a dump reaches it
 *                only after the parent's memory is written. The parent
 *                passes SIGTERM on; the child checks its ring is still
 *                there and the parent checks that the child said so.
 *   forker       the main loop also forks a child on every step that exits
 *                at once with a status made from the step's number; the
 *                parent reaps it and checks the status.
 *
 * DIR/count holds the number of steps so far (updated every 64 steps). */
#include "wl.h"

#include <dirent.h>
#include <linux/io_uring.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#define MAX_THREADS 8
#define MAX_FDS 64

struct masks {
	int n;
	long tid[MAX_THREADS];
	unsigned long long blk[MAX_THREADS];
};

struct fdent {
	int fd;
	char what[128];
};

struct fds {
	int n;
	struct fdent e[MAX_FDS];
};

static struct wl_map maps_start[WL_MAPS_MAX], maps_end[WL_MAPS_MAX];
static int nmaps_start, nmaps_end;
static struct masks masks_start, masks_end;
static struct fds fds_start, fds_end;
static char status_buf[8192];
static volatile int stop_thread;
static volatile uint64_t thread_count;

/* The value of a "Key:" line of a /proc status file, or NULL. */
static const char *status_field(const char *path, const char *key)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	ssize_t n = read(fd, status_buf, sizeof(status_buf) - 1);
	close(fd);
	if (n <= 0)
		return NULL;
	status_buf[n] = 0;
	size_t kl = strlen(key);
	for (char *l = status_buf; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL)
		if (!strncmp(l, key, kl) && l[kl] == ':')
			return l + kl + 1;
	return NULL;
}

/* Thread IDs of this process, sorted. */
static int thread_ids(long *tids, int max)
{
	DIR *d = opendir("/proc/self/task");
	int n = 0;
	struct dirent *e;
	if (!d)
		return -1;
	while ((e = readdir(d)))
		if (e->d_name[0] != '.' && n < max)
			tids[n++] = atol(e->d_name);
	closedir(d);
	for (int i = 1; i < n; i++)
		for (int j = i; j > 0 && tids[j - 1] > tids[j]; j--) {
			long t = tids[j];
			tids[j] = tids[j - 1];
			tids[j - 1] = t;
		}
	return n;
}

static void read_masks(struct masks *m)
{
	m->n = thread_ids(m->tid, MAX_THREADS);
	for (int i = 0; i < m->n; i++) {
		char path[128];
		snprintf(path, sizeof(path), "/proc/self/task/%ld/status", m->tid[i]);
		const char *v = status_field(path, "SigBlk");
		m->blk[i] = v ? strtoull(v, NULL, 16) : ~0ULL;
	}
}

/* Every thread's TracerPid is 0. */
static void expect_untraced(void)
{
	long tids[MAX_THREADS];
	int n = thread_ids(tids, MAX_THREADS);
	for (int i = 0; i < n; i++) {
		char path[128];
		snprintf(path, sizeof(path), "/proc/self/task/%ld/status", tids[i]);
		const char *v = status_field(path, "TracerPid");
		if (!v || atol(v) != 0)
			wl_fail("thread %ld is traced (TracerPid %ld)", tids[i], v ? atol(v) : -1L);
	}
}

/* The fd table: numbers, and what each is (a path for files; the kind,
 * without the inode number, for pipes, sockets and anonymous inodes; fds 0-2
 * only by kind, as a restore gives them a log file of its own). */
static void read_fds(struct fds *f)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	f->n = 0;
	if (!d)
		return;
	while ((e = readdir(d))) {
		int fd = atoi(e->d_name);
		if (e->d_name[0] == '.' || fd == dirfd(d) || f->n == MAX_FDS)
			continue;
		char path[64], link[128] = "";
		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
		ssize_t l = readlink(path, link, sizeof(link) - 1);
		link[l > 0 ? l : 0] = 0;
		char *colon = strchr(link, ':');
		if (link[0] != '/' && colon)
			*colon = 0;
		else if (fd < 3)
			link[1] = 0;
		struct fdent *x = &f->e[f->n++];
		x->fd = fd;
		snprintf(x->what, sizeof(x->what), "%s", link);
	}
	closedir(d);
	for (int i = 1; i < f->n; i++)
		for (int j = i; j > 0 && f->e[j - 1].fd > f->e[j].fd; j--) {
			struct fdent t = f->e[j];
			f->e[j] = f->e[j - 1];
			f->e[j - 1] = t;
		}
}

static void *counting_thread(void *arg)
{
	(void)arg;
	sigset_t s;
	sigemptyset(&s);
	sigaddset(&s, SIGUSR1);
	sigaddset(&s, SIGWINCH);
	pthread_sigmask(SIG_BLOCK, &s, NULL);
	while (!stop_thread) {
		thread_count++;
		wl_sleep_ms(1);
	}
	return NULL;
}

static int ring_child(int ready_fd)
{
	struct io_uring_params p;
	memset(&p, 0, sizeof(p));
	long ring = syscall(SYS_io_uring_setup, 4, &p);
	if (ring < 0) {
		dprintf(2, "io_uring_setup: %s\n", strerror(errno));
		return 2;
	}
	if (write(ready_fd, "r", 1) != 1)
		return 2;
	close(ready_fd);
	wl_wait_term();
	char path[64], link[128] = "";
	snprintf(path, sizeof(path), "/proc/self/fd/%ld", ring);
	ssize_t l = readlink(path, link, sizeof(link) - 1);
	link[l > 0 ? l : 0] = 0;
	return strcmp(link, "anon_inode:[io_uring]") == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv, 3);
	const char *mode = argv[1];
	size_t mib = strtoul(argv[2], NULL, 10);
	int uring = !strcmp(mode, "uring-child"), forker = !strcmp(mode, "forker");
	if (!uring && !forker && strcmp(mode, "plain")) {
		dprintf(2, "unknown mode %s\n", mode);
		return 2;
	}
	pid_t child = 0;
	if (uring) {
		int p[2];
		char c;
		if (pipe2(p, O_CLOEXEC) != 0)
			return 2;
		child = fork();
		if (child < 0)
			return 2;
		if (child == 0) {
			close(p[0]);
			_exit(ring_child(p[1]));
		}
		close(p[1]);
		if (read(p[0], &c, 1) != 1) {
			dprintf(2, "the io_uring child did not start\n");
			return 2;
		}
		close(p[0]);
	}

	/* fds: a pipe and a file of the workload directory. */
	int pfd[2];
	if (pipe(pfd) != 0)
		return 2;
	char fpath[4096];
	wl_path(fpath, sizeof(fpath), "intact.file");
	int ffd = open(fpath, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (ffd < 0 || write(ffd, "intact", 6) != 6)
		return 2;

	size_t words = mib * (1 << 20) / 8;
	uint64_t *mem = mmap(NULL, words * 8, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED)
		return 2;
	uint64_t sum = 0, x = 0x9e3779b97f4a7c15ULL;
	for (size_t i = 0; i < words; i++) {
		x = x * 6364136223846793005ULL + 1442695040888963407ULL;
		mem[i] = x;
		sum += x;
	}

	sigset_t s;
	sigemptyset(&s);
	sigaddset(&s, SIGUSR2);
	sigprocmask(SIG_BLOCK, &s, NULL);
	pthread_t th;
	if (pthread_create(&th, NULL, counting_thread, NULL) != 0)
		return 2;
	while (thread_count == 0)
		wl_sleep_ms(1);

	read_masks(&masks_start);
	read_fds(&fds_start);
	nmaps_start = wl_maps_read(maps_start, WL_MAPS_MAX);
	wl_write("count", "0\n");
	wl_write("ready", "%d\n", (int)getpid());

	uint64_t steps = 0, forks = 0;
	while (!wl_term) {
		for (int k = 0; k < 4096; k++) {
			x = x * 6364136223846793005ULL + 1442695040888963407ULL;
			size_t i = (size_t)(x >> 17) % words;
			uint64_t v = mem[i] ^ (x | 1);
			sum += v - mem[i];
			mem[i] = v;
		}
		steps++;
		if (forker) {
			pid_t c = fork();
			if (c == 0)
				_exit((int)(steps & 0x3f));
			int st = 0;
			pid_t w;
			do
				w = c < 0 ? -1 : waitpid(c, &st, 0);
			while (w < 0 && errno == EINTR);
			if (w != c)
				wl_fail("step %llu: fork or waitpid failed: %s", (unsigned long long)steps,
					strerror(errno));
			else if (!WIFEXITED(st) || WEXITSTATUS(st) != (int)(steps & 0x3f))
				wl_fail("step %llu: child %d ended with status %#x, expected exit %d",
					(unsigned long long)steps, (int)c, st, (int)(steps & 0x3f));
			forks++;
		}
		if (steps % 64 == 0)
			wl_write("count", "%llu\n", (unsigned long long)steps);
		wl_sleep_ms(1);
	}

	/* The map first, before anything below allocates. */
	nmaps_end = wl_maps_read(maps_end, WL_MAPS_MAX);
	read_masks(&masks_end);
	read_fds(&fds_end);
	expect_untraced();
	wl_maps_expect_same(maps_start, nmaps_start, maps_end, nmaps_end);
	if (masks_start.n != masks_end.n)
		wl_fail("%d threads at start, %d now", masks_start.n, masks_end.n);
	for (int i = 0; i < masks_start.n && i < masks_end.n; i++)
		if (masks_start.tid[i] != masks_end.tid[i] || masks_start.blk[i] != masks_end.blk[i])
			wl_fail("thread %ld blocked %016llx at start; now thread %ld blocks %016llx",
				masks_start.tid[i], masks_start.blk[i], masks_end.tid[i], masks_end.blk[i]);
	if (fds_start.n != fds_end.n) {
		char a[512] = "", b[512] = "";
		for (int i = 0; i < fds_start.n; i++)
			snprintf(a + strlen(a), sizeof(a) - strlen(a), " %d=%s", fds_start.e[i].fd, fds_start.e[i].what);
		for (int i = 0; i < fds_end.n; i++)
			snprintf(b + strlen(b), sizeof(b) - strlen(b), " %d=%s", fds_end.e[i].fd, fds_end.e[i].what);
		wl_fail("%d fds at start (%s), %d now (%s)", fds_start.n, a, fds_end.n, b);
	}
	for (int i = 0; i < fds_start.n && i < fds_end.n; i++)
		if (fds_start.e[i].fd != fds_end.e[i].fd || strcmp(fds_start.e[i].what, fds_end.e[i].what))
			wl_fail("fd %d was %s at start; now fd %d is %s", fds_start.e[i].fd, fds_start.e[i].what,
				fds_end.e[i].fd, fds_end.e[i].what);
	if (wl_corrupt())
		mem[words / 2] ^= 1;
	uint64_t check = 0;
	for (size_t i = 0; i < words; i++)
		check += mem[i];
	if (check != sum)
		wl_fail("memory checksum %016llx, the running checksum says %016llx", (unsigned long long)check,
			(unsigned long long)sum);
	char buf[16] = "";
	if (pread(ffd, buf, 6, 0) != 6 || memcmp(buf, "intact", 6))
		wl_fail("fd %d no longer reads the file's contents", ffd);
	stop_thread = 1;
	pthread_join(th, NULL);
	if (child > 0) {
		int st = 0;
		pid_t w;
		kill(child, SIGTERM);
		do
			w = waitpid(child, &st, 0);
		while (w < 0 && errno == EINTR);
		if (w != child || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
			wl_fail("the io_uring child ended with status %#x (its ring is gone?)", st);
	}
	wl_pass_note("steps=%llu forks=%llu threads=%d", (unsigned long long)steps, (unsigned long long)forks,
		     masks_end.n);
	return wl_finish();
}
