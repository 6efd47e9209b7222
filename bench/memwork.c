/* Benchmark workload: SIZE_MIB MiB of touched anonymous memory.
 *
 *   memwork SIZE_MIB READY_FILE VERDICT_FILE
 *
 * Maps SIZE_MIB MiB of private anonymous memory, fills every 8-byte word with
 * a value derived from its index and a per-run seed (so every page differs
 * from every other), writes READY_FILE, then waits for SIGTERM. On SIGTERM it
 * checks every word of every page and writes "PASS <pages>" or
 * "FAIL: <reason>" to VERDICT_FILE (written to a temporary name, then
 * renamed, so a reader never sees half a verdict). Exit status 0 on PASS. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static uint64_t seed;

static inline uint64_t pattern(uint64_t i)
{
	uint64_t x = (i + 1) * 0x9E3779B97F4A7C15ull ^ seed;
	return x ^ (x >> 29);
}

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

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: %s SIZE_MIB READY_FILE VERDICT_FILE\n", argv[0]);
		return 2;
	}
	size_t size = strtoull(argv[1], NULL, 10) << 20;
	const char *ready = argv[2], *verdict = argv[3];
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	seed = ((uint64_t)ts.tv_sec << 32) ^ (uint64_t)ts.tv_nsec ^ (uint64_t)getpid();

	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigprocmask(SIG_BLOCK, &set, NULL);

	uint64_t *mem = NULL;
	size_t words = size / 8;
	if (size) {
		mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (mem == MAP_FAILED) {
			perror("mmap");
			return 1;
		}
		for (size_t i = 0; i < words; i++)
			mem[i] = pattern(i);
	}
	if (write_file(ready, "ready\n") != 0) {
		perror(ready);
		return 1;
	}

	for (;;) {
		int s = sigwaitinfo(&set, NULL);
		if (s == SIGTERM)
			break;
		if (s < 0 && errno != EINTR) {
			perror("sigwaitinfo");
			return 1;
		}
	}

	char msg[256];
	snprintf(msg, sizeof msg, "PASS %zu pages\n", size / 4096);
	for (size_t i = 0; i < words; i++) {
		if (mem[i] != pattern(i)) {
			snprintf(msg, sizeof msg,
				 "FAIL: word %zu (page %zu) holds %#llx, expected %#llx\n", i,
				 i * 8 / 4096, (unsigned long long)mem[i],
				 (unsigned long long)pattern(i));
			break;
		}
	}
	if (write_file(verdict, msg) != 0) {
		perror(verdict);
		return 1;
	}
	return strncmp(msg, "PASS", 4) == 0 ? 0 : 1;
}
