/* memory DIR: memory of every kind, filled with known patterns.
 *
 * Areas: private anonymous; shared anonymous; a private mapping of
 * DIR/private.dat with some pages written (copied on write); a shared mapping
 * of DIR/shared.dat written through the mapping; the heap (malloc from brk);
 * an array on the stack; an area made PROT_NONE after its pattern was
 * written; a MAP_GROWSDOWN area; an area never touched (must still read as
 * zeros, and its pages must still not exist). Before ready it writes
 * DIR/maps-at-ready (a copy of /proc/self/maps) and DIR/areas ("name address
 * pages" per line). On SIGTERM every pattern, the memory map, the program
 * break and the never-touched pages are checked. */
#include "wl.h"

#include <sys/mman.h>

#define NPRIV 16
#define NSHARED 16
#define NFILE 8
#define NNONE 4
#define NGROWS 4
#define NUNTOUCHED 64
#define HEAP_BYTES (96 * 1024)
#define STACK_BYTES (48 * 1024)

static struct wl_map maps_before[WL_MAPS_MAX], maps_after[WL_MAPS_MAX];

static void *map(size_t pages, int prot, int flags, int fd)
{
	void *p = mmap(NULL, pages * WL_PAGE, prot, flags, fd, 0);
	if (p == MAP_FAILED) {
		perror("mmap");
		exit(2);
	}
	return p;
}

/* Creates DIR/name holding `pages` pages of pattern `seed`. */
static int make_file(const char *name, size_t pages, uint32_t seed)
{
	char path[4096];
	static unsigned char buf[NFILE * WL_PAGE];
	wl_path(path, sizeof(path), name);
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	wl_fill(buf, pages * WL_PAGE, seed);
	if (fd < 0 || write(fd, buf, pages * WL_PAGE) != (ssize_t)(pages * WL_PAGE)) {
		perror(path);
		exit(2);
	}
	return fd;
}

/* Looks up the area holding addr in /proc/self/smaps: its permissions and
 * whether VmFlags has `flag`. Returns 1 when found. */
static int smaps_area(void *addr, char perms[8], const char *flag, int *has_flag)
{
	static char buf[1 << 20];
	int fd = open("/proc/self/smaps", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	size_t len = 0;
	ssize_t r;
	while ((r = read(fd, buf + len, sizeof(buf) - 1 - len)) > 0)
		len += (size_t)r;
	close(fd);
	buf[len] = 0;
	int in = 0, found = 0;
	for (char *line = buf; line && *line;) {
		char *next = strchr(line, '\n');
		if (next)
			*next++ = 0;
		unsigned long s, e;
		char p[8];
		if (sscanf(line, "%lx-%lx %7s", &s, &e, p) == 3 && strchr(line, '-') < strchr(line, ' ')) {
			in = (unsigned long)addr >= s && (unsigned long)addr < e;
			if (in) {
				found = 1;
				memcpy(perms, p, 8);
			}
		} else if (in && !strncmp(line, "VmFlags:", 8)) {
			char want[8];
			snprintf(want, sizeof(want), " %s", flag);
			*has_flag = strstr(line, want) != NULL;
		}
		line = next;
	}
	return found;
}

/* How many of the pages at addr are present, from /proc/self/pagemap. */
static long present_pages(void *addr, size_t pages)
{
	uint64_t e[NUNTOUCHED];
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (fd < 0 || pages > NUNTOUCHED)
		return -1;
	ssize_t n = pread(fd, e, pages * 8, (off_t)((unsigned long)addr / WL_PAGE * 8));
	close(fd);
	if (n != (ssize_t)(pages * 8))
		return -1;
	long count = 0;
	for (size_t i = 0; i < pages; i++)
		count += (e[i] >> 63) & 1;
	return count;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv, 1);
	unsigned char stack_buf[STACK_BYTES];
	int rw = PROT_READ | PROT_WRITE;

	unsigned char *priv = map(NPRIV, rw, MAP_PRIVATE | MAP_ANONYMOUS, -1);
	unsigned char *shared = map(NSHARED, rw, MAP_SHARED | MAP_ANONYMOUS, -1);
	int pfd = make_file("private.dat", NFILE, 3);
	unsigned char *pfile = map(NFILE, rw, MAP_PRIVATE, pfd);
	int sfd = make_file("shared.dat", NFILE, 0);
	unsigned char *sfile = map(NFILE, rw, MAP_SHARED, sfd);
	unsigned char *heap = malloc(HEAP_BYTES);
	unsigned char *none = map(NNONE, rw, MAP_PRIVATE | MAP_ANONYMOUS, -1);
	unsigned char *grows = map(NGROWS, rw, MAP_PRIVATE | MAP_ANONYMOUS | MAP_GROWSDOWN, -1);
	unsigned char *untouched = map(NUNTOUCHED, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1);
	if (!heap)
		return 2;

	wl_fill(priv, NPRIV * WL_PAGE, 1);
	wl_fill(shared, NSHARED * WL_PAGE, 2);
	for (int pg = 1; pg < NFILE; pg += 2) /* copy on write: pages 1, 3, 5, 7 */
		wl_fill(pfile + pg * WL_PAGE, WL_PAGE, 40 + (uint32_t)pg);
	wl_fill(sfile, NFILE * WL_PAGE, 5);
	wl_fill(heap, HEAP_BYTES, 6);
	wl_fill(stack_buf, STACK_BYTES, 7);
	wl_fill(none, NNONE * WL_PAGE, 8);
	mprotect(none, NNONE * WL_PAGE, PROT_NONE);
	wl_fill(grows, NGROWS * WL_PAGE, 9);
	void *brk_at_ready = sbrk(0);
	long untouched_present = present_pages(untouched, NUNTOUCHED);
	if (untouched_present != 0) {
		dprintf(2, "never-touched area has %ld pages present before the dump\n", untouched_present);
		return 2;
	}
	int nmaps = wl_maps_read(maps_before, WL_MAPS_MAX);
	wl_copy_to("/proc/self/maps", "maps-at-ready");
	wl_write("areas",
		 "private %p %lu\nshared %p %lu\nprivate-file %p %lu\nshared-file %p %lu\nprot-none %p %lu\n"
		 "growsdown %p %lu\nuntouched %p %lu\n",
		 (void *)priv, (unsigned long)NPRIV, (void *)shared, (unsigned long)NSHARED, (void *)pfile,
		 (unsigned long)NFILE, (void *)sfile, (unsigned long)NFILE, (void *)none, (unsigned long)NNONE,
		 (void *)grows, (unsigned long)NGROWS, (void *)untouched, (unsigned long)NUNTOUCHED);
	wl_write("ready", "ready\n");

	wl_wait_term();

	if (wl_corrupt())
		priv[5 * WL_PAGE + 17] ^= 0x20;
	wl_maps_expect_same(maps_before, nmaps, maps_after, wl_maps_read(maps_after, WL_MAPS_MAX));
	if (sbrk(0) != brk_at_ready)
		wl_fail("program break is %p, it was %p", sbrk(0), brk_at_ready);

	char perms[8] = "";
	int gd = 0;
	if (!smaps_area(none, perms, "gd", &gd) || strcmp(perms, "---p") != 0)
		wl_fail("PROT_NONE area at %p: permissions are %s, expected ---p", (void *)none, perms);
	if (!smaps_area(grows, perms, "gd", &gd) || !gd)
		wl_fail("MAP_GROWSDOWN area at %p: VmFlags lacks gd", (void *)grows);
	long present = present_pages(untouched, NUNTOUCHED);
	if (present != 0)
		wl_fail("never-touched area at %p: %ld of %d pages are present, expected none", (void *)untouched,
			present, NUNTOUCHED);

	wl_expect("private anonymous", priv, NPRIV * WL_PAGE, 1);
	wl_expect("shared anonymous", shared, NSHARED * WL_PAGE, 2);
	for (int pg = 0; pg < NFILE; pg++) {
		char what[64];
		snprintf(what, sizeof(what), "private file mapping, page %d (%s)", pg,
			 pg % 2 ? "written" : "as in the file");
		if (pg % 2)
			wl_expect(what, pfile + pg * WL_PAGE, WL_PAGE, 40 + (uint32_t)pg);
		else
			wl_expect_from(what, pfile + pg * WL_PAGE, WL_PAGE, 3, pg * WL_PAGE);
		if (wl_failed())
			break;
	}
	static unsigned char disk[NFILE * WL_PAGE];
	if (pread(pfd, disk, sizeof(disk), 0) != (ssize_t)sizeof(disk))
		wl_fail("reading private.dat: %s", strerror(errno));
	wl_expect("private.dat on disk (copy-on-write pages must not reach it)", disk, sizeof(disk), 3);
	wl_expect("shared file mapping", sfile, NFILE * WL_PAGE, 5);
	msync(sfile, NFILE * WL_PAGE, MS_SYNC);
	if (pread(sfd, disk, sizeof(disk), 0) != (ssize_t)sizeof(disk))
		wl_fail("reading shared.dat: %s", strerror(errno));
	wl_expect("shared.dat on disk (written through the shared mapping)", disk, sizeof(disk), 5);
	wl_expect("heap", heap, HEAP_BYTES, 6);
	wl_expect("stack array", stack_buf, STACK_BYTES, 7);
	if (mprotect(none, NNONE * WL_PAGE, PROT_READ) != 0)
		wl_fail("mprotect of the PROT_NONE area back to PROT_READ: %s", strerror(errno));
	else
		wl_expect("PROT_NONE area", none, NNONE * WL_PAGE, 8);
	wl_expect("MAP_GROWSDOWN area", grows, NGROWS * WL_PAGE, 9);
	for (size_t i = 0; i < NUNTOUCHED * WL_PAGE; i++)
		if (untouched[i]) {
			wl_fail("never-touched area: byte %zu is %#x, expected 0", i, untouched[i]);
			break;
		}
	return wl_finish();
}
