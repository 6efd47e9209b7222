/* A Linux AIO context (io_setup) across a dump and restore: three writes
 * submitted and completed, one reaped before the dump, two left in the
 * ring. After restore the ring is at the same address (the context id),
 * the two events are reaped with their tags and results, and a new request
 * completes into the next slot.
 *
 * usage: aio DIR */
#include "wl.h"

#include <linux/aio_abi.h>
#include <sys/syscall.h>

struct ring {
	unsigned id, nr, head, tail, magic, compat, incompat, header_length;
};

static long io_setup_(unsigned n, aio_context_t *ctx) { return syscall(SYS_io_setup, n, ctx); }
static long io_submit_(aio_context_t ctx, long n, struct iocb **cbs) { return syscall(SYS_io_submit, ctx, n, cbs); }
static long io_getevents_(aio_context_t ctx, long min, long max, struct io_event *ev, struct timespec *ts)
{
	return syscall(SYS_io_getevents, ctx, min, max, ev, ts);
}

static char data[4][64];

static long submit(aio_context_t ctx, int fd, int i)
{
	struct iocb cb;
	struct iocb *cbs[1] = { &cb };
	memset(&cb, 0, sizeof(cb));
	snprintf(data[i], sizeof(data[i]), "request %d of the aio workload\n", i);
	cb.aio_data = 0xa10000 + (uint64_t)i;
	cb.aio_lio_opcode = IOCB_CMD_PWRITE;
	cb.aio_fildes = (uint32_t)fd;
	cb.aio_buf = (uint64_t)(uintptr_t)data[i];
	cb.aio_nbytes = strlen(data[i]);
	cb.aio_offset = (int64_t)i * 64;
	return io_submit_(ctx, 1, cbs);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv, 1);
	char path[4096];
	wl_path(path, sizeof(path), "aio.dat");
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	aio_context_t ctx = 0;
	if (fd < 0 || io_setup_(16, &ctx) != 0) {
		dprintf(2, "setting up: %s\n", strerror(errno));
		return 2;
	}
	struct ring *ring = (struct ring *)ctx;
	for (int i = 0; i < 3; i++)
		if (submit(ctx, fd, i) != 1) {
			dprintf(2, "io_submit: %s\n", strerror(errno));
			return 2;
		}
	struct io_event ev[4];
	struct timespec ts = { 2, 0 };
	if (io_getevents_(ctx, 1, 1, ev, &ts) != 1 || ev[0].data != 0xa10000) {
		dprintf(2, "reaping the first event: %s\n", strerror(errno));
		return 2;
	}
	unsigned head = ring->head, tail = ring->tail;
	if (tail - head != 2) {
		dprintf(2, "ring: head %u tail %u, expected two events left\n", head, tail);
		return 2;
	}
	wl_write("ready", "ready\n");
	wl_wait_term();

	if (wl_corrupt())
		io_getevents_(ctx, 1, 1, ev, &ts);
	if (ring->magic != 0xa10a10a1 || ring->head != head || ring->tail != tail)
		wl_fail("ring at %#lx: magic %#x head %u tail %u, were head %u tail %u", (unsigned long)ctx,
			ring->magic, ring->head, ring->tail, head, tail);
	long n = io_getevents_(ctx, 2, 2, ev, &ts);
	if (n != 2)
		wl_fail("io_getevents after restore: %ld events (%s), expected the 2 left", n,
			n < 0 ? strerror(errno) : "");
	for (long i = 0; i < n && i < 2; i++)
		if (ev[i].data != 0xa10001 + (uint64_t)i || ev[i].res != (int64_t)strlen(data[i + 1]))
			wl_fail("event %ld: data %#llx res %lld", i, (unsigned long long)ev[i].data,
				(long long)ev[i].res);
	if (submit(ctx, fd, 3) != 1)
		wl_fail("io_submit after restore: %s", strerror(errno));
	else if ((n = io_getevents_(ctx, 1, 1, ev, &ts)) != 1 || ev[0].data != 0xa10003)
		wl_fail("the request made after restore: %ld events, data %#llx", n,
			(unsigned long long)ev[0].data);
	else if (ring->tail != tail + 1)
		wl_fail("the request made after restore completed at slot %u, expected %u", ring->tail - 1, tail);
	char buf[64];
	for (int i = 0; i < 4; i++) {
		ssize_t len = (ssize_t)strlen(data[i]);
		if (pread(fd, buf, sizeof(buf), i * 64) < len || memcmp(buf, data[i], (size_t)len) != 0)
			wl_fail("the file lacks request %d's data", i);
	}
	return wl_finish();
}
