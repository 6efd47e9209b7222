/* shmem DIR: memory a parent and its child share, of every kind.
 *
 * Before forking, the parent maps:
 *   anon   MAP_SHARED|MAP_ANONYMOUS, 16 pages; pages 4-7 made read-only
 *          (two areas, one object); pages 12-15 never touched (holes);
 *   zero   a MAP_SHARED mapping of /dev/zero, 4 pages;
 *   file   a MAP_SHARED mapping of DIR/shared-file (a file on disk), 4 pages;
 *   posix  a MAP_SHARED mapping of a POSIX shared memory object (/dev/shm), 4 pages;
 *   alias  a second mapping of anon's pages 8-11 made with mremap(old_size 0).
 * The child maps `mine`, shared anonymous memory of its own, after the fork.
 * The parent fills anon pages 0-3, the child pages 8-11 and `mine`; each
 * fills its half of zero, file and posix. Ready once the child is done.
 *
 * SIGTERM goes to the parent, which passes it to the child. Then each checks
 * every pattern (its own and the other's writes), and the two play ping-pong
 * through every shared object: the parent writes an odd token, the child
 * answers with the next even one (bounded waits). A copy of an object that
 * is no longer shared fails the game. The parent also checks that anon's
 * untouched pages are still not in memory (mincore) and that its memory map
 * is as it was. The child's verdict is folded into the parent's. */
#include "wl.h"

#include <sys/mman.h>
#include <sys/wait.h>

#define PG WL_PAGE

static unsigned char *anon, *zero, *file, *posix, *alias, *mine;
static char posix_name[64];
static const char *role = "parent";

struct obj {
	const char *name;
	unsigned char **p;
};

static struct obj objs[] = {
	{ "anon", &anon }, { "zero", &zero }, { "file", &file }, { "posix", &posix }, { "alias", &alias },
};
#define NOBJ (sizeof(objs) / sizeof(objs[0]))

static void *map_shared(int fd, size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | (fd < 0 ? MAP_ANONYMOUS : 0), fd, 0);
	if (p == MAP_FAILED) {
		perror("mmap");
		exit(2);
	}
	return p;
}

static int open_file(const char *path, int flags)
{
	int fd = open(path, flags | O_RDWR | O_CLOEXEC, 0600);
	if (fd < 0 || ftruncate(fd, 4 * PG) != 0) {
		dprintf(2, "%s: %s\n", path, strerror(errno));
		exit(2);
	}
	return fd;
}

/* The token of the ping-pong game: the last word of an object's first page
 * (of alias's last page, which is anon's page 11). */
static volatile int *token(unsigned char *p)
{
	if (p == alias)
		return (volatile int *)(p + 4 * PG - sizeof(int));
	return (volatile int *)(p + PG - sizeof(int));
}

static int wait_token(volatile int *t, int want)
{
	for (int i = 0; i < 5000; i++) { /* 5 s */
		if (__atomic_load_n(t, __ATOMIC_ACQUIRE) == want)
			return 0;
		wl_sleep_ms(1);
	}
	return -1;
}

static void play(int parent)
{
	for (size_t i = 0; i < NOBJ; i++) {
		volatile int *t = token(*objs[i].p);
		for (int round = 0; round < 3; round++) {
			int ask = 100 * (int)i + 2 * round + 1;
			if (parent) {
				__atomic_store_n(t, ask, __ATOMIC_RELEASE);
				if (wait_token(t, ask + 1) != 0) {
					wl_fail("%s: the child did not answer token %d through %s (it holds %d)", role, ask,
						objs[i].name, *t);
					return;
				}
			} else {
				if (wait_token(t, ask) != 0) {
					wl_fail("%s: no token %d from the parent through %s (it holds %d)", role, ask,
						objs[i].name, *t);
					return;
				}
				__atomic_store_n(t, ask + 1, __ATOMIC_RELEASE);
			}
		}
	}
}

/* Patterns: the parent's seed 1, the child's 2; the token words are left out. */
static void fill_half(int child)
{
	size_t part = PG - 64; /* clear of the token word */
	wl_fill(zero + (child ? 2 : 1) * PG, part, 10 + child);
	wl_fill(file + (child ? 2 : 1) * PG, part, 20 + child);
	wl_fill(posix + (child ? 2 : 1) * PG, part, 30 + child);
}

static void check_all(void)
{
	size_t part = PG - 64;
	wl_expect("anon pages 1-3 (parent's)", anon + PG, 3 * PG, 1);
	wl_expect("anon pages 4-7 (read-only, parent's)", anon + 4 * PG, 4 * PG, 4);
	wl_expect("anon pages 8-11 (child's)", anon + 8 * PG, 4 * PG - 64, 2);
	wl_expect("alias of anon pages 8-11", alias, 4 * PG - 64, 2);
	for (int c = 0; c < 2; c++) {
		wl_expect(c ? "zero (child's half)" : "zero (parent's half)", zero + (1 + c) * PG, part, 10 + c);
		wl_expect(c ? "file (child's half)" : "file (parent's half)", file + (1 + c) * PG, part, 20 + c);
		wl_expect(c ? "posix (child's half)" : "posix (parent's half)", posix + (1 + c) * PG, part, 30 + c);
	}
}

/* Run by the parent only: reading a page of shared memory puts it in memory. */
static void check_holes(void)
{
	unsigned char vec[4];
	if (mincore(anon + 12 * PG, 4 * PG, vec) != 0)
		wl_fail("mincore: %s", strerror(errno));
	else
		for (int i = 0; i < 4; i++)
			if (vec[i] & 1)
				wl_fail("anon page %d was never written, yet it is in memory", 12 + i);
	for (size_t i = 12 * PG; i < 16 * PG; i++)
		if (anon[i]) {
			wl_fail("anon page %zu (never written) holds %#x at %zu", i / PG, anon[i], i % PG);
			break;
		}
}

static int child_main(int sync_w)
{
	role = "child";
	mine = map_shared(-1, 2 * PG);
	wl_fill(mine, 2 * PG, 7);
	wl_fill(anon + 8 * PG, 4 * PG - 64, 2);
	fill_half(1);
	close(sync_w);
	wl_wait_term();
	if (wl_corrupt())
		mine[5] ^= 1;
	check_all();
	wl_expect("the child's own shared memory", mine, 2 * PG, 7);
	play(0);
	return wl_finish_as("verdict-child");
}

int main(int argc, char **argv)
{
	wl_init(argc, argv, 1);
	anon = map_shared(-1, 16 * PG);
	int zfd = open("/dev/zero", O_RDWR | O_CLOEXEC);
	if (zfd < 0)
		return 2;
	zero = map_shared(zfd, 4 * PG);
	close(zfd);
	char path[4096];
	wl_path(path, sizeof(path), "shared-file");
	int ffd = open_file(path, O_CREAT | O_TRUNC);
	file = map_shared(ffd, 4 * PG);
	close(ffd);
	snprintf(posix_name, sizeof(posix_name), "/dev/shm/wl-shmem-%d", (int)getpid());
	int pfd = open_file(posix_name, O_CREAT | O_EXCL);
	posix = map_shared(pfd, 4 * PG);
	close(pfd);
	wl_fill(anon + PG, 3 * PG, 1);
	wl_fill(anon + 4 * PG, 4 * PG, 4);
	if (mprotect(anon + 4 * PG, 4 * PG, PROT_READ) != 0)
		return 2;
	alias = mremap(anon + 8 * PG, 0, 4 * PG, MREMAP_MAYMOVE);
	if (alias == MAP_FAILED) {
		perror("mremap");
		return 2;
	}
	fill_half(0);

	int sync[2];
	if (pipe(sync) != 0)
		return 2;
	pid_t kid = fork();
	if (kid < 0)
		return 2;
	if (kid == 0) {
		close(sync[0]);
		exit(child_main(sync[1]));
	}
	close(sync[1]);
	char c;
	while (read(sync[0], &c, 1) > 0) /* end of file: the child is done */
		;
	close(sync[0]);
	static struct wl_map before[WL_MAPS_MAX], after[WL_MAPS_MAX];
	int nbefore = wl_maps_read(before, WL_MAPS_MAX);
	wl_copy_to("/proc/self/maps", "maps-before");
	wl_write("ready", "%d\n", (int)kid);

	wl_wait_term();

	if (wl_corrupt())
		anon[PG + 3] ^= 1;
	if (kill(kid, SIGTERM) != 0)
		wl_fail("cannot pass SIGTERM to the child: %s", strerror(errno));
	int nafter = wl_maps_read(after, WL_MAPS_MAX);
	wl_copy_to("/proc/self/maps", "maps-after");
	wl_maps_expect_same(before, nbefore, after, nafter);
	check_holes();
	check_all();
	play(1);

	int status = 0;
	if (waitpid(kid, &status, 0) != kid)
		wl_fail("waitpid(child): %s", strerror(errno));
	char verdict[600];
	if (wl_read("verdict-child", verdict, sizeof(verdict)) < 0)
		wl_fail("the child wrote no verdict; wait status %#x", status);
	else if (strcmp(verdict, "PASS") != 0)
		wl_fail("%s", verdict + (strncmp(verdict, "FAIL: ", 6) ? 0 : 6));
	unlink(posix_name);
	return wl_finish();
}
