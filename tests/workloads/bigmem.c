/* bigmem [MIB] DIR: one anonymous area of MIB MiB (default 1024), every
 * 8-byte word of every page holding a value derived from its page index and
 * its place in the page. On SIGTERM every word of every page is checked, and
 * that nothing of a restore's filling is left behind: no userfaultfd among
 * the fds, the area registered with none (no "um"/"uw"/"ui" VmFlags). */
#include "wl.h"

#include <dirent.h>
#include <sys/mman.h>

static void check_no_userfaultfd(void *area)
{
	DIR *d = opendir("/proc/self/fd");
	if (!d) {
		wl_fail("opendir /proc/self/fd: %s", strerror(errno));
		return;
	}
	struct dirent *e;
	while ((e = readdir(d))) {
		char path[320], link[256];
		snprintf(path, sizeof(path), "/proc/self/fd/%s", e->d_name);
		ssize_t n = readlink(path, link, sizeof(link) - 1);
		if (n <= 0)
			continue;
		link[n] = 0;
		if (strstr(link, "userfaultfd"))
			wl_fail("fd %s is %s", e->d_name, link);
	}
	closedir(d);
	FILE *f = fopen("/proc/self/smaps", "r");
	if (!f) {
		wl_fail("fopen /proc/self/smaps: %s", strerror(errno));
		return;
	}
	char line[512], want[32];
	snprintf(want, sizeof(want), "%lx-", (unsigned long)area);
	int in_area = 0, seen = 0;
	while (fgets(line, sizeof(line), f)) {
		if (strchr(line, '-') && strchr(line, ' ') && strchr(line, '-') < strchr(line, ' '))
			in_area = strncmp(line, want, strlen(want)) == 0;
		if (!in_area || strncmp(line, "VmFlags:", 8))
			continue;
		seen = 1;
		for (char *t = strtok(line + 8, " \n"); t; t = strtok(NULL, " \n"))
			if (!strcmp(t, "um") || !strcmp(t, "uw") || !strcmp(t, "ui"))
				wl_fail("the area at %p is registered with userfaultfd (VmFlags %s)", area, t);
	}
	fclose(f);
	if (!seen)
		wl_fail("the area at %p has no VmFlags in /proc/self/smaps", area);
}

static inline uint64_t word(uint64_t page, uint64_t i)
{
	return (page + 1) * 0x9E3779B97F4A7C15ULL ^ i * 0xC2B2AE3D27D4EB4FULL;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv, argc > 2 ? 2 : 1);
	size_t mib = argc > 2 ? strtoul(argv[1], NULL, 10) : 1024;
	size_t bytes = mib << 20, pages = bytes / WL_PAGE, words = WL_PAGE / 8;
	uint64_t *area = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (area == MAP_FAILED) {
		perror("mmap");
		return 2;
	}
	for (size_t p = 0; p < pages; p++)
		for (size_t i = 0; i < words; i++)
			area[p * words + i] = word(p, i);
	wl_write("ready", "%zu pages at %p\n", pages, (void *)area);

	wl_wait_term();

	if (wl_corrupt())
		((unsigned char *)area)[bytes - WL_PAGE / 2] ^= 1;
	size_t bad_pages = 0, first_page = 0, first_word = 0;
	for (size_t p = 0; p < pages; p++)
		for (size_t i = 0; i < words; i++)
			if (area[p * words + i] != word(p, i)) {
				if (!bad_pages) {
					first_page = p;
					first_word = i;
				}
				bad_pages++;
				break;
			}
	if (bad_pages) {
		size_t at = first_page * words + first_word;
		wl_fail("%zu of %zu pages differ; the first is page %zu (address %p): word %zu is %#llx, expected %#llx",
			bad_pages, pages, first_page, (void *)&area[at], first_word, (unsigned long long)area[at],
			(unsigned long long)word(first_page, first_word));
	}
	check_no_userfaultfd(area);
	wl_pass_note("pages=%zu", pages);
	return wl_finish();
}
