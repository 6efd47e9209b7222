/* Baselines measured beside stasis in the same run.
 *
 *   bw write PATH SIZE_MIB   create PATH, write SIZE_MIB MiB from a warm 8 MiB
 *                            buffer (8 MiB writes), close; prints write_s=SECONDS;
 *                            PATH is removed afterwards (not timed).
 *   bw copy SIZE_MIB         copy SIZE_MIB MiB from warm memory into
 *                            fresh_s:    a fresh, never-touched mapping (a page
 *                                        fault per page: restore's floor);
 *                            populate_s: a fresh mapping populated in bulk first
 *                                        with MADV_POPULATE_WRITE (timed too);
 *                            warm_s:     memory already touched (plain memcpy).
 *
 * Every copy is checked (first and last word of every page) so the compiler
 * cannot drop it and a short copy cannot pass. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void fill(uint64_t *p, size_t bytes)
{
	for (size_t i = 0; i < bytes / 8; i++)
		p[i] = (i + 1) * 0x9E3779B97F4A7C15ull;
}

static void *map(size_t size)
{
	void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED) {
		perror("mmap");
		exit(1);
	}
	return p;
}

static void check(const uint64_t *dst, const uint64_t *src, size_t size, const char *what)
{
	for (size_t off = 0; off < size; off += 4096) {
		size_t a = off / 8, b = (off + 4096) / 8 - 1;
		if (dst[a] != src[a] || dst[b] != src[b]) {
			fprintf(stderr, "bw: %s copy differs at offset %zu\n", what, off);
			exit(1);
		}
	}
}

static int do_write(const char *path, size_t size)
{
	const size_t chunk = 8 << 20;
	uint64_t *buf = map(chunk);
	fill(buf, chunk);
	double t0 = now();
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0) {
		perror(path);
		return 1;
	}
	for (size_t done = 0; done < size;) {
		size_t n = size - done < chunk ? size - done : chunk;
		ssize_t w = write(fd, buf, n);
		if (w <= 0) {
			perror("write");
			return 1;
		}
		done += w;
	}
	if (close(fd) != 0) {
		perror("close");
		return 1;
	}
	double t1 = now();
	unlink(path);
	printf("write_s=%.6f\n", t1 - t0);
	return 0;
}

static int do_copy(size_t size)
{
	uint64_t *src = map(size);
	fill(src, size);

	double t0 = now();
	uint64_t *dst = map(size);
	memcpy(dst, src, size);
	double fresh = now() - t0;
	check(dst, src, size, "fresh");

	t0 = now();
	memcpy(dst, src, size);
	double warm = now() - t0;
	check(dst, src, size, "warm");
	munmap(dst, size);

	t0 = now();
	dst = map(size);
	if (madvise(dst, size, MADV_POPULATE_WRITE) != 0) {
		perror("madvise(MADV_POPULATE_WRITE)");
		return 1;
	}
	memcpy(dst, src, size);
	double populate = now() - t0;
	check(dst, src, size, "populate");

	printf("fresh_s=%.6f populate_s=%.6f warm_s=%.6f\n", fresh, populate, warm);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 4 && strcmp(argv[1], "write") == 0)
		return do_write(argv[2], strtoull(argv[3], NULL, 10) << 20);
	if (argc == 3 && strcmp(argv[1], "copy") == 0)
		return do_copy(strtoull(argv[2], NULL, 10) << 20);
	fprintf(stderr, "usage: %s write PATH SIZE_MIB | copy SIZE_MIB\n", argv[0]);
	return 2;
}
