/* Unix seqpacket sockets holding empty records, and ends that can no longer
 * receive: after restore every record is still there, in order, empty ones
 * included, each a record (it carries credentials once SO_PASSCRED is set),
 * and an end whose peer shut down or closed reads its records and then end
 * of file (no credentials), which is not a record.
 *
 *   10/11  pair: 10 sent records of 10, 0, 3000 and 0 bytes to 11 and then
 *          shut down its sending side; 11 sent 0 and 7 bytes to 10.
 *   12     its peer sent 5, 0 and 6 bytes and closed.
 *   14/15  pair with nothing queued, 14 shut down both ways.
 *   16/17  pair: 16 sent one empty record, and 17 has SO_PASSCRED set.
 * Usage: seqpacket DIR */
#include "wl.h"
#include <sys/socket.h>
#include <sys/un.h>

static unsigned char buf[4096];

static void must(int ok, const char *what)
{
	if (!ok) {
		dprintf(2, "setup: %s: %s\n", what, strerror(errno));
		exit(2);
	}
}

static void at(int fd, int want)
{
	must(fd >= 0 && dup2(fd, want) == want, "dup2");
	if (fd != want)
		close(fd);
}

static void pair(int a, int b)
{
	int sv[2];
	must(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv) == 0, "socketpair");
	at(sv[0], a);
	at(sv[1], b);
}

static void record(int fd, size_t n, uint32_t seed)
{
	wl_fill(buf, n, seed);
	must(send(fd, buf, n, MSG_DONTWAIT) == (ssize_t)n, "send");
}

/* Receives one message; returns its length (-1 and errno on failure) and
 * whether it carried credentials. */
static ssize_t recv_one(int fd, int *creds)
{
	char control[256];
	struct iovec iov = { buf, sizeof(buf) };
	struct msghdr m;
	memset(&m, 0, sizeof(m));
	m.msg_iov = &iov;
	m.msg_iovlen = 1;
	m.msg_control = control;
	m.msg_controllen = sizeof(control);
	ssize_t n = recvmsg(fd, &m, MSG_DONTWAIT);
	*creds = 0;
	if (n < 0)
		return n;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c))
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS)
			*creds = 1;
	return n;
}

static int passcred(int fd)
{
	int v = -1;
	socklen_t l = sizeof(v);
	if (getsockopt(fd, SOL_SOCKET, SO_PASSCRED, &v, &l) != 0)
		return -1;
	return v;
}

/* Checks the records of fd (lengths and seeds), then what follows them:
 * end of file (eof) or EAGAIN. */
static void expect(int fd, const size_t *lens, const uint32_t *seeds, int count, int eof)
{
	int one = 1, creds;
	if (setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &one, sizeof(one)) != 0) {
		wl_fail("fd %d: SO_PASSCRED: %s", fd, strerror(errno));
		return;
	}
	for (int i = 0; i < count; i++) {
		ssize_t n = recv_one(fd, &creds);
		if (n < 0) {
			wl_fail("fd %d record %d: %s", fd, i + 1, strerror(errno));
			return;
		}
		if (!creds) {
			wl_fail("fd %d record %d: end of file where a record of %zu bytes was", fd, i + 1, lens[i]);
			return;
		}
		if ((size_t)n != lens[i]) {
			wl_fail("fd %d record %d: %zd bytes, expected %zu", fd, i + 1, n, lens[i]);
			return;
		}
		if (wl_check_from(buf, (size_t)n, seeds[i], 0) >= 0) {
			wl_fail("fd %d record %d: wrong contents", fd, i + 1);
			return;
		}
	}
	ssize_t n = recv_one(fd, &creds);
	if (eof && (n != 0 || creds))
		wl_fail("fd %d: after %d records, %s instead of end of file", fd, count,
			n < 0 ? strerror(errno) : creds ? "another record" : "data");
	if (!eof && (n >= 0 || errno != EAGAIN))
		wl_fail("fd %d: more than %d records (%zd bytes%s)", fd, count, n, creds ? ", a record" : "");
}

int main(int argc, char **argv)
{
	wl_init(argc, argv, 1);

	pair(10, 11);
	record(10, 10, 1);
	record(10, 0, 0);
	record(10, 3000, 3);
	record(10, 0, 0);
	record(11, 0, 0);
	record(11, 7, 5);
	must(shutdown(10, SHUT_WR) == 0, "shutdown 10");

	pair(12, 13);
	record(13, 5, 6);
	record(13, 0, 0);
	record(13, 6, 7);
	close(13);

	pair(14, 15);
	must(shutdown(14, SHUT_RDWR) == 0, "shutdown 14");

	pair(16, 17);
	record(16, 0, 0);
	int one = 1;
	must(setsockopt(17, SOL_SOCKET, SO_PASSCRED, &one, sizeof(one)) == 0, "SO_PASSCRED 17");

	wl_write("ready", "ready\n");
	wl_wait_term();

	if (wl_corrupt()) { /* consume the empty record 16 sent */
		char c;
		(void)!recv(17, &c, 1, MSG_DONTWAIT);
	}
	/* SO_PASSCRED as the program left it. */
	if (passcred(11) != 0)
		wl_fail("fd 11: SO_PASSCRED is %d, the program never set it", passcred(11));
	if (passcred(17) != 1)
		wl_fail("fd 17: SO_PASSCRED is %d, the program set it", passcred(17));

	const size_t l11[] = { 10, 0, 3000, 0 };
	const uint32_t s11[] = { 1, 0, 3, 0 };
	expect(11, l11, s11, 4, 1);
	const size_t l10[] = { 0, 7 };
	const uint32_t s10[] = { 0, 5 };
	expect(10, l10, s10, 2, 0);
	errno = 0;
	if (send(10, "x", 1, MSG_NOSIGNAL | MSG_DONTWAIT) >= 0 || errno != EPIPE)
		wl_fail("fd 10 can send again after its shutdown (%s)", strerror(errno));
	const size_t l12[] = { 5, 0, 6 };
	const uint32_t s12[] = { 6, 0, 7 };
	expect(12, l12, s12, 3, 1);
	expect(15, NULL, NULL, 0, 1);
	const size_t l17[] = { 0 };
	const uint32_t s17[] = { 0 };
	expect(17, l17, s17, 1, 0);
	/* The pair 16/17 still carries records both ways. */
	record(16, 100, 9);
	record(17, 0, 0);
	const size_t l17b[] = { 100 };
	const uint32_t s17b[] = { 9 };
	expect(17, l17b, s17b, 1, 0);
	expect(16, l17, s17, 1, 0);
	return wl_finish();
}
