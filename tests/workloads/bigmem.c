/* bigmem [MIB] DIR: one anonymous area of MIB MiB (default 1024), every
 * 8-byte word of every page holding a value derived from its page index and
 * its place in the page. On SIGTERM every word of every page is checked. */
#include "wl.h"

#include <sys/mman.h>

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
	wl_pass_note("pages=%zu", pages);
	return wl_finish();
}
