/* livemem [MIB [THREADS [unmap]]] DIR: memory written all the time, checked
 * against one instant.
 *
 * One private anonymous area of MIB MiB (default 256), split between THREADS
 * writer threads (default 2). Each thread goes over its pages in order, pass
 * after pass, and writes into every page the number of the pass (its
 * generation), the page's index and words derived from both. Before it
 * rewrites a page it checks that the page holds exactly the previous
 * generation: so at every instant, the pages before the thread's position
 * hold generation g and those from it on g - 1, and a page of any other
 * generation (one from after a dump's freeze, say, in a restored copy) is
 * found when the thread gets there. A thread stopped in the middle of a page
 * finishes that page first, so a copy taken at any instant is consistent with
 * the registers it resumes with.
 *
 * The main thread writes the number of complete passes of the slowest thread
 * to DIR/count every 20 ms. Ready once every thread has done two passes. On
 * SIGTERM the threads stop at a page boundary, and every page is checked
 * against the thread's (generation, position); the verdict is PASS with the
 * passes made, or the first page that was wrong.
 *
 * With "unmap", a second area of 4 MiB is mapped above the first (so a copy
 * in address order reaches it last) and filled; when DIR/unmap-now appears
 * (looked for every millisecond), the main thread unmaps it and writes
 * DIR/unmapped. */
#include "wl.h"

#include <pthread.h>
#include <sys/mman.h>

#define MAX_THREADS 16
#define WORDS (WL_PAGE / 8)

struct writer {
	pthread_t thread;
	uint64_t *pages;  /* first page of this thread */
	size_t npages;
	size_t first;     /* global index of its first page */
	volatile uint64_t gen;
	volatile size_t pos;
	volatile uint64_t passes;
	volatile int done;
};

static struct writer writers[MAX_THREADS];
static pthread_mutex_t fail_lock = PTHREAD_MUTEX_INITIALIZER;
static volatile int stop;

static inline uint64_t word(uint64_t gen, uint64_t index, uint64_t i)
{
	uint64_t x = gen * 0x9E3779B97F4A7C15ULL ^ index * 0xC2B2AE3D27D4EB4FULL ^ i * 0x165667B19E3779F9ULL;
	return x ^ x >> 29;
}

static void fill(uint64_t *p, uint64_t gen, uint64_t index)
{
	p[0] = gen;
	p[1] = index;
	for (size_t i = 2; i < WORDS; i++)
		p[i] = word(gen, index, i);
}

/* 0 when page p holds generation gen of page index, else a failure recorded. */
static int check(const uint64_t *p, uint64_t gen, uint64_t index, const char *when)
{
	int bad = p[0] != gen || p[1] != index;
	size_t i = 2;
	for (; !bad && i < WORDS; i++)
		bad = p[i] != word(gen, index, i);
	if (!bad)
		return 0;
	pthread_mutex_lock(&fail_lock);
	wl_fail("%s: page %llu holds generation %llu (index %llu, word %zu), expected generation %llu", when,
		(unsigned long long)index, (unsigned long long)p[0], (unsigned long long)p[1], i - 1,
		(unsigned long long)gen);
	pthread_mutex_unlock(&fail_lock);
	return -1;
}

static void *run(void *arg)
{
	struct writer *w = arg;
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	for (size_t p = 0; p < w->npages; p++)
		fill(w->pages + p * WORDS, 1, w->first + p);
	w->passes = 1;
	for (uint64_t gen = 2; !stop; gen++) {
		w->gen = gen;
		for (size_t p = 0; p < w->npages; p++) {
			if (stop) {
				w->pos = p;
				w->done = 1;
				return NULL;
			}
			uint64_t *page = w->pages + p * WORDS;
			if (check(page, gen - 1, w->first + p, "before rewriting it") != 0) {
				/* Keep the evidence: this thread writes no more. */
				w->pos = p;
				w->done = 1;
				return NULL;
			}
			fill(page, gen, w->first + p);
		}
		w->passes++;
	}
	w->pos = w->npages;
	w->done = 1;
	return NULL;
}

static uint64_t slowest(int n)
{
	uint64_t m = UINT64_MAX;
	for (int t = 0; t < n; t++)
		if (writers[t].passes < m)
			m = writers[t].passes;
	return m;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv, argc - 1);
	size_t mib = argc > 2 ? strtoul(argv[1], NULL, 10) : 256;
	int nthreads = argc > 3 ? atoi(argv[2]) : 2;
	if (mib == 0 || nthreads < 1 || nthreads > MAX_THREADS) {
		dprintf(2, "usage: livemem [MIB [THREADS]] DIR\n");
		return 2;
	}
	int unmap = argc > 4 && strcmp(argv[3], "unmap") == 0;
	size_t npages = (mib << 20) / WL_PAGE;
	size_t extra_len = 4 << 20;
	char *extra = NULL;
	if (unmap) {
		/* Mapped first: top-down placement puts it above the writers' area. */
		extra = mmap(NULL, extra_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (extra == MAP_FAILED) {
			perror("mmap");
			return 2;
		}
		memset(extra, 0x5a, extra_len);
	}
	uint64_t *area = mmap(NULL, npages * WL_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (area == MAP_FAILED) {
		perror("mmap");
		return 2;
	}
	for (int t = 0; t < nthreads; t++) {
		struct writer *w = &writers[t];
		w->first = npages * (size_t)t / (size_t)nthreads;
		w->npages = npages * (size_t)(t + 1) / (size_t)nthreads - w->first;
		w->pages = area + w->first * WORDS;
		if (pthread_create(&w->thread, NULL, run, w) != 0) {
			perror("pthread_create");
			return 2;
		}
	}
	while (slowest(nthreads) < 2 && !wl_failed())
		wl_sleep_ms(1);
	wl_write("ready", "%zu pages, %d threads\n", npages, nthreads);

	for (unsigned tick = 0; !wl_term; tick++) {
		if (tick % 20 == 0)
			wl_write("count", "%llu\n", (unsigned long long)slowest(nthreads));
		char buf[16];
		if (extra && wl_read("unmap-now", buf, sizeof(buf)) >= 0) {
			if (munmap(extra, extra_len) != 0)
				wl_fail("munmap: %s", strerror(errno));
			extra = NULL;
			wl_write("unmapped", "yes\n");
		}
		wl_sleep_ms(1);
	}
	stop = 1;
	for (int t = 0; t < nthreads; t++)
		pthread_join(writers[t].thread, NULL);

	if (wl_corrupt())
		writers[0].pages[WORDS * (writers[0].npages / 2) + 7] ^= 1;

	/* Every page against its thread's (generation, position). */
	for (int t = 0; t < nthreads && !wl_failed(); t++) {
		struct writer *w = &writers[t];
		for (size_t p = 0; p < w->npages; p++) {
			uint64_t gen = p < w->pos ? w->gen : w->gen - 1;
			if (check(w->pages + p * WORDS, gen, w->first + p, "after SIGTERM") != 0)
				break;
		}
	}
	wl_pass_note("passes=%llu", (unsigned long long)slowest(nthreads));
	return wl_finish();
}
