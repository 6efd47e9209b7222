/* tcp loopback DIR | tcp server PORT DIR: established TCP connections with
 * data queued in both directions, checked from inside after SIGTERM.
 *
 * loopback: the process listens on 127.0.0.1 and [::1]; a child connects
 * to both; over each connection the parent writes 300000 bytes the child
 * does not read yet and the child writes 70000 bytes the parent does not
 * read yet (so both send and receive queues hold data). On SIGTERM the
 * parent signals the child; each side reads what was queued for it, checks
 * it, and both exchange a further message; the parent checks the child's
 * verdict. Options set on the connections (TCP_NODELAY, SO_KEEPALIVE with
 * TCP_KEEPIDLE 33, SO_SNDBUF) must survive.
 *
 * server: listens on 0.0.0.0:PORT and accepts one connection (from the
 * test, on the host). It writes up to 2000000 bytes (seed 1) until the
 * socket is full, waits until the client's first CLIENT_BYTES (seed 2) are
 * queued without reading them, and writes DIR/ready holding the number of
 * bytes it wrote. On SIGTERM it reads CLIENT_BYTES + MORE_BYTES bytes
 * (seed 2; the client sends the rest after the restore), checks them and
 * the options, and sends "OK <n>\n" before writing its verdict. */
#include "wl.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>

#define CLIENT_BYTES 5000
#define MORE_BYTES 3000
#define DOWN_BYTES 300000
#define UP_BYTES 70000

static unsigned char buf[2000000];

static void must(int ok, const char *what)
{
	if (!ok) {
		dprintf(2, "setup: %s: %s\n", what, strerror(errno));
		exit(2);
	}
}

static void setint(int fd, int level, int opt, int v)
{
	must(setsockopt(fd, level, opt, &v, sizeof(v)) == 0, "setsockopt");
}

static void expect_int(int fd, int level, int opt, int want, const char *what)
{
	int v = -1;
	socklen_t l = sizeof(v);
	if (getsockopt(fd, level, opt, &v, &l) != 0 || v != want)
		wl_fail("fd %d: %s is %d, expected %d", fd, what, v, want);
}

static void set_options(int fd)
{
	setint(fd, IPPROTO_TCP, TCP_NODELAY, 1);
	setint(fd, SOL_SOCKET, SO_KEEPALIVE, 1);
	setint(fd, IPPROTO_TCP, TCP_KEEPIDLE, 33);
	setint(fd, SOL_SOCKET, SO_SNDBUF, 65536);
}

static void check_options(int fd)
{
	expect_int(fd, IPPROTO_TCP, TCP_NODELAY, 1, "TCP_NODELAY");
	expect_int(fd, SOL_SOCKET, SO_KEEPALIVE, 1, "SO_KEEPALIVE");
	expect_int(fd, IPPROTO_TCP, TCP_KEEPIDLE, 33, "TCP_KEEPIDLE");
	expect_int(fd, SOL_SOCKET, SO_SNDBUF, 131072, "SO_SNDBUF");
}

/* Writes the pattern (from offset `from`) until `n` bytes or a full socket. */
static size_t write_some(int fd, size_t n, uint32_t seed, size_t from)
{
	size_t done = 0;
	wl_fill(buf, n + from, seed);
	while (done < n) {
		ssize_t w = send(fd, buf + from + done, n - done, MSG_DONTWAIT | MSG_NOSIGNAL);
		if (w < 0 && errno == EAGAIN)
			break;
		must(w > 0, "send");
		done += (size_t)w;
	}
	return done;
}

static void write_all(int fd, size_t n, uint32_t seed)
{
	wl_fill(buf, n, seed);
	for (size_t done = 0; done < n;) {
		struct pollfd p = { .fd = fd, .events = POLLOUT };
		if (poll(&p, 1, 10000) != 1) {
			wl_fail("fd %d: could not write %zu bytes in 10 s", fd, n);
			return;
		}
		ssize_t w = send(fd, buf + done, n - done, MSG_DONTWAIT | MSG_NOSIGNAL);
		if (w < 0 && errno == EAGAIN)
			continue;
		if (w <= 0) {
			wl_fail("fd %d: writing: %s", fd, strerror(errno));
			return;
		}
		done += (size_t)w;
	}
}

/* Reads exactly n bytes (waiting up to 10 s for them) and checks the pattern. */
static void read_expect(int fd, size_t n, uint32_t seed, const char *what)
{
	size_t have = 0;
	while (have < n) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		if (poll(&p, 1, 10000) != 1) {
			wl_fail("%s: only %zu of %zu bytes arrived in 10 s", what, have, n);
			return;
		}
		ssize_t r = recv(fd, buf + have, n - have, MSG_DONTWAIT);
		if (r < 0 && errno == EAGAIN)
			continue;
		if (r <= 0) {
			wl_fail("%s: read %zu of %zu bytes, then %s", what, have, n, r ? strerror(errno) : "end of file");
			return;
		}
		have += (size_t)r;
	}
	if (wl_corrupt())
		buf[n / 2] ^= 1;
	wl_expect(what, buf, n, seed);
}

static int queued(int fd)
{
	int n = 0;
	ioctl(fd, FIONREAD, &n);
	return n;
}

static int listen_on(int family, const char *addr, int port)
{
	int l = socket(family, SOCK_STREAM, 0);
	must(l >= 0, "socket");
	setint(l, SOL_SOCKET, SO_REUSEADDR, 1);
	struct sockaddr_storage a;
	memset(&a, 0, sizeof(a));
	socklen_t al;
	if (family == AF_INET) {
		struct sockaddr_in *s = (struct sockaddr_in *)&a;
		s->sin_family = AF_INET;
		s->sin_port = htons((uint16_t)port);
		inet_pton(AF_INET, addr, &s->sin_addr);
		al = sizeof(*s);
	} else {
		struct sockaddr_in6 *s = (struct sockaddr_in6 *)&a;
		s->sin6_family = AF_INET6;
		s->sin6_port = htons((uint16_t)port);
		inet_pton(AF_INET6, addr, &s->sin6_addr);
		al = sizeof(*s);
	}
	must(bind(l, (struct sockaddr *)&a, al) == 0, "bind");
	must(listen(l, 4) == 0, "listen");
	return l;
}

static int connect_to(int l)
{
	struct sockaddr_storage a;
	socklen_t al = sizeof(a);
	must(getsockname(l, (struct sockaddr *)&a, &al) == 0, "getsockname");
	int c = socket(a.ss_family, SOCK_STREAM, 0);
	must(c >= 0 && connect(c, (struct sockaddr *)&a, al) == 0, "connect");
	return c;
}

static int loopback(void)
{
	int l4 = listen_on(AF_INET, "127.0.0.1", 0), l6 = listen_on(AF_INET6, "::1", 0);
	int c[2] = { connect_to(l4), connect_to(l6) };
	int s[2] = { accept(l4, NULL, NULL), accept(l6, NULL, NULL) };
	must(s[0] >= 0 && s[1] >= 0, "accept");
	close(l4);
	close(l6);
	for (int i = 0; i < 2; i++) {
		set_options(s[i]);
		set_options(c[i]);
	}
	pid_t kid = fork();
	must(kid >= 0, "fork");
	if (kid == 0) {
		close(s[0]);
		close(s[1]);
		for (int i = 0; i < 2; i++)
			write_all(c[i], UP_BYTES, 20 + i);
		wl_write("child-ready", "1\n");
		wl_wait_term();
		for (int i = 0; i < 2; i++) {
			read_expect(c[i], DOWN_BYTES, 10 + i, i ? "child: IPv6 connection" : "child: IPv4 connection");
			check_options(c[i]);
			write_all(c[i], 100, 30 + i);
		}
		return wl_finish_as("verdict-child");
	}
	close(c[0]);
	close(c[1]);
	/* The child's bytes are queued here before the parent fills its side. */
	char tmp[64];
	for (int i = 0; i < 4000 && wl_read("child-ready", tmp, sizeof(tmp)) < 0; i++)
		wl_sleep_ms(5);
	if (wl_read("child-ready", tmp, sizeof(tmp)) < 0) {
		dprintf(2, "the child did not write its bytes\n");
		return 2;
	}
	/* As much as fits now; the rest after SIGTERM, while the child reads. */
	size_t wrote[2];
	for (int i = 0; i < 2; i++)
		wrote[i] = write_some(s[i], DOWN_BYTES, 10 + i, 0);
	wl_write("ready", "%zu %zu\n", wrote[0], wrote[1]);
	wl_wait_term();
	if (kill(kid, SIGTERM) != 0)
		wl_fail("cannot signal the child: %s", strerror(errno));
	for (int i = 0; i < 2; i++) {
		if (wrote[i] < DOWN_BYTES) {
			wl_fill(buf, DOWN_BYTES, 10 + i);
			for (size_t done = wrote[i]; done < DOWN_BYTES;) {
				struct pollfd p = { .fd = s[i], .events = POLLOUT };
				if (poll(&p, 1, 10000) != 1) {
					wl_fail("connection %d: the child stopped reading", i);
					break;
				}
				ssize_t w = send(s[i], buf + done, DOWN_BYTES - done, MSG_DONTWAIT | MSG_NOSIGNAL);
				if (w > 0)
					done += (size_t)w;
				else if (errno != EAGAIN) {
					wl_fail("connection %d: %s", i, strerror(errno));
					break;
				}
			}
		}
	}
	for (int i = 0; i < 2; i++) {
		read_expect(s[i], UP_BYTES, 20 + i, i ? "parent: IPv6 connection" : "parent: IPv4 connection");
		read_expect(s[i], 100, 30 + i, "parent: the child's last message");
		check_options(s[i]);
	}
	int status = 0;
	if (waitpid(kid, &status, 0) != kid)
		wl_fail("waitpid: %s", strerror(errno));
	char cv[600];
	if (wl_read("verdict-child", cv, sizeof(cv)) < 0)
		wl_fail("the child wrote no verdict (status %#x)", status);
	else if (strcmp(cv, "PASS") != 0)
		wl_fail("%s", cv);
	return wl_finish();
}

static int server(int port)
{
	int l = listen_on(AF_INET, "0.0.0.0", port);
	int s = accept(l, NULL, NULL);
	must(s >= 0, "accept");
	set_options(s);
	size_t wrote = write_some(s, sizeof(buf), 1, 0);
	for (int i = 0; i < 4000 && queued(s) < CLIENT_BYTES; i++)
		wl_sleep_ms(5);
	if (queued(s) < CLIENT_BYTES) {
		dprintf(2, "the client's %d bytes did not arrive\n", CLIENT_BYTES);
		return 2;
	}
	wl_write("ready", "%zu\n", wrote);
	wl_wait_term();
	read_expect(s, CLIENT_BYTES + MORE_BYTES, 2, "the client's bytes");
	check_options(s);
	char ok[64];
	int n = snprintf(ok, sizeof(ok), "OK %d\n", CLIENT_BYTES + MORE_BYTES);
	if (send(s, ok, (size_t)n, MSG_NOSIGNAL) != n)
		wl_fail("answering the client: %s", strerror(errno));
	wl_pass_note("wrote=%zu", wrote);
	return wl_finish();
}

int main(int argc, char **argv)
{
	if (argc > 1 && !strcmp(argv[1], "loopback")) {
		wl_init(argc, argv, 2);
		return loopback();
	}
	if (argc > 2 && !strcmp(argv[1], "server")) {
		wl_init(argc, argv, 3);
		return server(atoi(argv[2]));
	}
	dprintf(2, "usage: tcp loopback DIR | tcp server PORT DIR\n");
	return 2;
}
