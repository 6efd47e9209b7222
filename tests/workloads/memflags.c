/* Flags of memory areas and of the address space across a dump and restore:
 * madvise advice (MADV_DONTFORK, WIPEONFORK, DONTDUMP, HUGEPAGE, NOHUGEPAGE,
 * MERGEABLE, SEQUENTIAL, RANDOM), how areas were mapped (MAP_NORESERVE,
 * MAP_DROPPABLE), locked areas (MAP_LOCKED, mlock, mlock2 MLOCK_ONFAULT),
 * mlockall(MCL_FUTURE | MCL_ONFAULT) for mappings made after the restore, and
 * PR_SET_THP_DISABLE, shared read-only file mappings that may (or may not)
 * be made writable, guard regions (MADV_GUARD_INSTALL). Each area's flags as smaps shows them are compared with
 * those at ready, and its contents checked.
 *
 * usage: memflags DIR */
#include "wl.h"

#include <sys/mman.h>
#include <sys/prctl.h>

#ifndef MAP_DROPPABLE
#define MAP_DROPPABLE 0x08
#endif
#ifndef MADV_WIPEONFORK
#define MADV_WIPEONFORK 18
#endif
#ifndef MLOCK_ONFAULT
#define MLOCK_ONFAULT 0x01
#endif
#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102
#endif
#ifndef MCL_ONFAULT
#define MCL_ONFAULT 4
#endif

#define PAGES 4
#define LEN (PAGES * WL_PAGE)

/* The smaps flags this test is about. */
static const char *const WATCHED[] = { "lo", "lf", "nr", "dp", "sr", "rr", "dc", "dd", "mg", "hg", "nh", "wf" };

struct area {
	const char *what;
	int map_flags;
	int advice; /* -1: none */
	int lock;   /* 0: none, 1: mlock, 2: mlock2(MLOCK_ONFAULT) */
	const char *expect; /* a flag smaps must show at ready */
	int check_data;
	char *p;
	char flags[64];
};

static struct area areas[] = {
	{ "dontfork", MAP_PRIVATE, MADV_DONTFORK, 0, "dc", 1, 0, "" },
	{ "locked sequential", MAP_PRIVATE | MAP_LOCKED, MADV_SEQUENTIAL, 0, "lo", 1, 0, "" },
	{ "noreserve dontdump", MAP_PRIVATE | MAP_NORESERVE, MADV_DONTDUMP, 0, "nr", 1, 0, "" },
	{ "hugepage", MAP_PRIVATE, MADV_HUGEPAGE, 0, "hg", 1, 0, "" },
	{ "nohugepage", MAP_PRIVATE, MADV_NOHUGEPAGE, 0, "nh", 1, 0, "" },
	{ "mergeable", MAP_PRIVATE, MADV_MERGEABLE, 0, "mg", 1, 0, "" },
	{ "wipeonfork", MAP_PRIVATE, MADV_WIPEONFORK, 0, "wf", 1, 0, "" },
	{ "random mlocked", MAP_PRIVATE, MADV_RANDOM, 1, "rr", 1, 0, "" },
	{ "locked on fault", MAP_PRIVATE, -1, 2, "lf", 1, 0, "" },
	/* Its pages may be dropped at any time (and are not saved): flags only. */
	{ "droppable", MAP_DROPPABLE, -1, 0, "dp", 0, 0, "" },
	{ "shared locked", MAP_SHARED, MADV_DONTDUMP, 1, "lo", 1, 0, "" },
};
#define NAREAS (sizeof(areas) / sizeof(areas[0]))

/* Which of the PAGES pages at `p` are guard pages (pagemap bit 58), as a
 * bit mask; -1 when pagemap cannot be read. */
static int guard_mask(const char *p)
{
	uint64_t e[PAGES];
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t n = pread(fd, e, sizeof(e), (off_t)((uintptr_t)p / WL_PAGE * 8));
	close(fd);
	if (n != (ssize_t)sizeof(e))
		return -1;
	int mask = 0;
	for (int i = 0; i < PAGES; i++)
		if (e[i] >> 58 & 1)
			mask |= 1 << i;
	return mask;
}

/* The watched flags of the area starting at `addr` ("" if none), from
 * /proc/self/smaps. Returns 0 when the area was found. */
static int flags_at(void *addr, char *out, size_t size)
{
	FILE *f = fopen("/proc/self/smaps", "re");
	char line[1024];
	int in = 0, found = -1;
	out[0] = 0;
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		unsigned long a, b;
		if (sscanf(line, "%lx-%lx ", &a, &b) == 2 && strchr(line, '-') < strchr(line, ' ')) {
			in = (void *)a <= addr && addr < (void *)b;
		} else if (in && !strncmp(line, "VmFlags:", 8)) {
			for (size_t i = 0; i < sizeof(WATCHED) / sizeof(WATCHED[0]); i++) {
				char tok[5];
				snprintf(tok, sizeof(tok), " %s", WATCHED[i]);
				char *at = strstr(line + 8, tok);
				if (at && (at[3] == ' ' || at[3] == '\n')) {
					strncat(out, WATCHED[i], size - strlen(out) - 1);
					strncat(out, " ", size - strlen(out) - 1);
				}
			}
			found = 0;
			in = 0;
		}
	}
	fclose(f);
	return found;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv, 1);
	int used = 0;
	for (size_t i = 0; i < NAREAS; i++) {
		struct area *a = &areas[i];
		a->p = mmap(NULL, LEN, PROT_READ | PROT_WRITE, a->map_flags | MAP_ANONYMOUS, -1, 0);
		if (a->p == MAP_FAILED) {
			/* MAP_DROPPABLE needs Linux 6.11. */
			a->p = NULL;
			continue;
		}
		if (a->advice >= 0 && madvise(a->p, LEN, a->advice) != 0) {
			/* MADV_MERGEABLE without KSM. */
			munmap(a->p, LEN);
			a->p = NULL;
			continue;
		}
		if (a->check_data)
			wl_fill(a->p, LEN, 100 + (uint32_t)i);
		if ((a->lock == 1 && mlock(a->p, LEN) != 0) || (a->lock == 2 && mlock2(a->p, LEN, MLOCK_ONFAULT) != 0)) {
			dprintf(2, "locking area %s: %s\n", a->what, strerror(errno));
			return 2;
		}
		if (flags_at(a->p, a->flags, sizeof(a->flags)) != 0 || !strstr(a->flags, a->expect)) {
			dprintf(2, "area %s: smaps flags '%s' lack %s\n", a->what, a->flags, a->expect);
			return 2;
		}
		used++;
	}
	/* Shared, read-only mappings of a file open for writing (mprotect may
	 * make it writable) and of one open read-only (it may not). */
	char path[4096];
	wl_path(path, sizeof(path), "memflags.dat");
	int rw = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (rw < 0 || ftruncate(rw, WL_PAGE) != 0) {
		dprintf(2, "creating %s: %s\n", path, strerror(errno));
		return 2;
	}
	int ro = open(path, O_RDONLY | O_CLOEXEC);
	char *may_write = mmap(NULL, WL_PAGE, PROT_READ, MAP_SHARED, rw, 0);
	char *read_only = mmap(NULL, WL_PAGE, PROT_READ, MAP_SHARED, ro, 0);
	if (ro < 0 || may_write == MAP_FAILED || read_only == MAP_FAILED) {
		dprintf(2, "mapping %s: %s\n", path, strerror(errno));
		return 2;
	}
	close(rw);
	close(ro);
	/* Guard regions (Linux 6.13) on the middle two pages of four. */
	char *guarded = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (guarded == MAP_FAILED) {
		dprintf(2, "mmap: %s\n", strerror(errno));
		return 2;
	}
	wl_fill(guarded, LEN, 99);
	int guards = madvise(guarded + WL_PAGE, 2 * WL_PAGE, MADV_GUARD_INSTALL) == 0;
	if (guards && guard_mask(guarded) != 0x6) {
		dprintf(2, "guard pages: pagemap shows %#x\n", guard_mask(guarded));
		return 2;
	}
	if (prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) != 0) {
		dprintf(2, "PR_SET_THP_DISABLE: %s\n", strerror(errno));
		return 2;
	}
	/* Mappings made from now on are locked as they fault in. */
	if (mlockall(MCL_FUTURE | MCL_ONFAULT) != 0) {
		dprintf(2, "mlockall: %s\n", strerror(errno));
		return 2;
	}
	wl_write("ready", "ready\n");
	wl_wait_term();

	if (wl_corrupt())
		munlock(areas[1].p, LEN);
	for (size_t i = 0; i < NAREAS; i++) {
		struct area *a = &areas[i];
		char now[64];
		if (!a->p)
			continue;
		if (flags_at(a->p, now, sizeof(now)) != 0) {
			wl_fail("area %s at %p is gone", a->what, (void *)a->p);
			continue;
		}
		if (strcmp(now, a->flags) != 0)
			wl_fail("area %s at %p: flags are '%s', were '%s'", a->what, (void *)a->p, now, a->flags);
		if (a->check_data)
			wl_expect(a->what, a->p, LEN, 100 + (uint32_t)i);
	}
	if (mprotect(may_write, WL_PAGE, PROT_READ | PROT_WRITE) != 0)
		wl_fail("a shared mapping of a file open for writing cannot be made writable: %s", strerror(errno));
	else {
		may_write[0] = 'w';
		if (read_only[0] != 'w')
			wl_fail("a write through the shared mapping does not reach the file");
	}
	if (mprotect(read_only, WL_PAGE, PROT_READ | PROT_WRITE) == 0)
		wl_fail("a shared mapping of a file open read-only became writable");
	if (guards) {
		int m = guard_mask(guarded);
		if (m != 0x6)
			wl_fail("guard pages: pagemap shows %#x, expected pages 1 and 2 (0x6)", m);
		wl_expect("page before the guard region", guarded, WL_PAGE, 99);
		wl_expect_from("page after the guard region", guarded + 3 * WL_PAGE, WL_PAGE, 99, 3 * WL_PAGE);
	}
	int thp = prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0);
	if (thp != 1)
		wl_fail("PR_GET_THP_DISABLE is %d, expected 1", thp);
	char *fresh = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char fresh_flags[64] = "";
	if (fresh == MAP_FAILED)
		wl_fail("mmap after restore: %s", strerror(errno));
	else if (flags_at(fresh, fresh_flags, sizeof(fresh_flags)) != 0 || !strstr(fresh_flags, "lo") ||
		 !strstr(fresh_flags, "lf"))
		wl_fail("an area mapped after restore has flags '%s': mlockall(MCL_FUTURE | MCL_ONFAULT) is lost",
			fresh_flags);
	wl_pass_note("areas=%d guards=%d", used, guards);
	return wl_finish();
}
