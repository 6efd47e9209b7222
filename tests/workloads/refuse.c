/* refuse socket|thread|io_uring DIR: a workload holding something a dump
 * must refuse, and that must go on running untouched after the refusal.
 *
 *   socket    a socketpair at fds 7 and 8, with 5 bytes queued for fd 7 that
 *             carry an fd (SCM_RIGHTS): fds in flight are refused
 *   thread    a second thread counting every millisecond
 *   io_uring  an io_uring instance at fd 9 (raw io_uring_setup)
 *
 * The main thread counts every millisecond until SIGTERM. Then: the counter
 * went on, and the resource still works (the queued bytes read back and the
 * pair still carries data; the thread is still counting and joins; the ring
 * is still an io_uring fd that accepts a no-op submission; the AIO context
 * still answers io_getevents). */
#include "wl.h"

#include <linux/io_uring.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>

static volatile uint64_t main_count, thread_count;
static volatile int stop_thread;

static void *count_thread(void *arg)
{
	(void)arg;
	while (!stop_thread) {
		thread_count++;
		wl_sleep_ms(1);
	}
	return NULL;
}

static void check_socket(void)
{
	char buf[16] = "";
	ssize_t n = recv(7, buf, sizeof(buf), MSG_DONTWAIT);
	if (n != 5 || memcmp(buf, "hello", 5) != 0)
		wl_fail("socket fd 7: read %zd bytes (%.*s), expected the 5 queued bytes \"hello\"", n,
			n > 0 ? (int)n : 0, buf);
	if (send(7, "again", 5, 0) != 5 || recv(8, buf, sizeof(buf), MSG_DONTWAIT) != 5 || memcmp(buf, "again", 5))
		wl_fail("socket pair 7/8 no longer carries data");
}

static void check_ring(int fd, struct io_uring_params *p)
{
	char link[256];
	ssize_t ll = readlink("/proc/self/fd/9", link, sizeof(link) - 1);
	link[ll > 0 ? ll : 0] = 0;
	if (strcmp(link, "anon_inode:[io_uring]") != 0) {
		wl_fail("fd 9 is %s, expected anon_inode:[io_uring]", link);
		return;
	}
	/* Submit one no-op through the shared rings and wait for its completion. */
	size_t sq_bytes = p->sq_off.array + p->sq_entries * sizeof(uint32_t);
	size_t cq_bytes = p->cq_off.cqes + p->cq_entries * sizeof(struct io_uring_cqe);
	unsigned char *sq = mmap(NULL, sq_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, IORING_OFF_SQ_RING);
	unsigned char *cq = mmap(NULL, cq_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, IORING_OFF_CQ_RING);
	struct io_uring_sqe *sqes = mmap(NULL, p->sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE,
					 MAP_SHARED, fd, IORING_OFF_SQES);
	if (sq == MAP_FAILED || cq == MAP_FAILED || sqes == MAP_FAILED) {
		wl_fail("io_uring fd 9: cannot map its rings: %s", strerror(errno));
		return;
	}
	uint32_t *tail = (uint32_t *)(sq + p->sq_off.tail), mask = *(uint32_t *)(sq + p->sq_off.ring_mask);
	uint32_t *array = (uint32_t *)(sq + p->sq_off.array), t = *tail;
	memset(&sqes[t & mask], 0, sizeof(struct io_uring_sqe));
	sqes[t & mask].opcode = IORING_OP_NOP;
	sqes[t & mask].user_data = 0xfeed;
	array[t & mask] = t & mask;
	__atomic_store_n(tail, t + 1, __ATOMIC_RELEASE);
	long r = syscall(SYS_io_uring_enter, fd, 1, 1, IORING_ENTER_GETEVENTS, NULL, 0);
	uint32_t head = *(uint32_t *)(cq + p->cq_off.head), cmask = *(uint32_t *)(cq + p->cq_off.ring_mask);
	struct io_uring_cqe *cqe = (struct io_uring_cqe *)(cq + p->cq_off.cqes) + (head & cmask);
	if (r != 1 || __atomic_load_n((uint32_t *)(cq + p->cq_off.tail), __ATOMIC_ACQUIRE) == head ||
	    cqe->user_data != 0xfeed)
		wl_fail("io_uring fd 9: a no-op submission did not complete (io_uring_enter gave %ld)", r);
}


int main(int argc, char **argv)
{
	wl_init(argc, argv, 2);
	const char *kind = argv[1];
	pthread_t thread;
	struct io_uring_params params;
	memset(&params, 0, sizeof(params));
	if (!strcmp(kind, "socket")) {
		int sv[2];
		if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0 || dup2(sv[0], 7) != 7 || dup2(sv[1], 8) != 8) {
			perror("socketpair");
			return 2;
		}
		close(sv[0]);
		close(sv[1]);
		/* "hello" with fd 0 attached. */
		union {
			char buf[CMSG_SPACE(sizeof(int))];
			struct cmsghdr align;
		} ctl;
		struct iovec iov = { .iov_base = "hello", .iov_len = 5 };
		struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf,
				      .msg_controllen = sizeof(ctl.buf) };
		struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		int zero = 0;
		memcpy(CMSG_DATA(c), &zero, sizeof(int));
		if (sendmsg(8, &msg, 0) != 5)
			return 2;
	} else if (!strcmp(kind, "thread")) {
		if (pthread_create(&thread, NULL, count_thread, NULL) != 0)
			return 2;
		while (!thread_count)
			wl_sleep_ms(1);
	} else if (!strcmp(kind, "io_uring")) {
		long fd = syscall(SYS_io_uring_setup, 4, &params);
		if (fd < 0 || dup2((int)fd, 9) != 9) {
			perror("io_uring_setup");
			return 2;
		}
		close((int)fd);
	} else {
		dprintf(2, "usage: refuse socket|thread|io_uring DIR\n");
		return 2;
	}
	wl_write("ready", "%s\n", kind);

	while (!wl_term) {
		main_count++;
		if (main_count % 64 == 0)
			wl_write("count", "%llu\n", (unsigned long long)main_count);
		wl_sleep_ms(1);
	}

	uint64_t at_term = main_count;
	if (wl_corrupt()) { /* consume or lose the resource */
		char c;
		if (!strcmp(kind, "socket"))
			(void)!recv(7, &c, 1, 0);
		else if (!strcmp(kind, "thread"))
			stop_thread = 1;
		else
			dup2(open("/dev/null", O_RDONLY), 9);
	}
	if (!strcmp(kind, "socket")) {
		check_socket();
	} else if (!strcmp(kind, "thread")) {
		wl_sleep_ms(5);
		uint64_t seen = thread_count;
		for (int i = 0; i < 2000 && thread_count == seen; i++)
			wl_sleep_ms(1);
		if (thread_count == seen)
			wl_fail("the second thread stopped counting (at %llu)", (unsigned long long)seen);
		stop_thread = 1;
		pthread_join(thread, NULL);
	} else {
		check_ring(9, &params);
	}
	wl_pass_note("count=%llu", (unsigned long long)at_term);
	return wl_finish();
}
