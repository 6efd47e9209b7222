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
#include <fcntl.h>
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

/* ---- halfclosed: connections in every closing state, over loopback ---- */

static int tcp_state(int fd)
{
	struct tcp_info ti;
	socklen_t l = sizeof(ti);
	if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &l) != 0)
		return -1;
	return ti.tcpi_state;
}

static const char *state_str(int st)
{
	static const char *n[] = { "?", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2",
				   "TIME_WAIT", "CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING" };
	return st > 0 && st < 12 ? n[st] : "?";
}

/* Waits (up to 10 s) for fd to reach state `want`; setup fails otherwise. */
static void await_state(int fd, int want, const char *what)
{
	for (int i = 0; i < 2000 && tcp_state(fd) != want; i++)
		wl_sleep_ms(5);
	if (tcp_state(fd) != want) {
		dprintf(2, "setup: %s is in state %s, not %s\n", what, state_str(tcp_state(fd)), state_str(want));
		exit(2);
	}
}

static void expect_state(int fd, int want, const char *what)
{
	int st = tcp_state(fd);
	if (st != want)
		wl_fail("%s: state %s, expected %s", what, state_str(st), state_str(want));
}

/* The next read (waiting up to 10 s) must report end of file. */
static void expect_eof(int fd, const char *what)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	if (poll(&p, 1, 10000) != 1) {
		wl_fail("%s: no end of file within 10 s", what);
		return;
	}
	char c;
	ssize_t r = recv(fd, &c, 1, MSG_DONTWAIT);
	if (r != 0)
		wl_fail("%s: expected end of file, got %zd (%s)", what, r, r < 0 ? strerror(errno) : "data");
}

/* A write must fail with EPIPE (our side was shut down). */
static void expect_epipe(int fd, const char *what)
{
	ssize_t w = send(fd, "x", 1, MSG_NOSIGNAL | MSG_DONTWAIT);
	if (w >= 0 || errno != EPIPE)
		wl_fail("%s: a write after shutdown gave %zd (%s), expected EPIPE", what, w,
			w < 0 ? strerror(errno) : "written");
}

/* Small buffers: a full window holds little, so what is left unsent at the
 * dump is little too. */
static void small_buffers(int fd)
{
	setint(fd, SOL_SOCKET, SO_RCVBUF, 4096);
	setint(fd, SOL_SOCKET, SO_SNDBUF, 4096);
}

static void pair_on(int l, int *c, int *s)
{
	struct sockaddr_storage a;
	socklen_t al = sizeof(a);
	must(getsockname(l, (struct sockaddr *)&a, &al) == 0, "getsockname");
	*c = socket(a.ss_family, SOCK_STREAM, 0);
	must(*c >= 0, "socket");
	small_buffers(*c);
	must(connect(*c, (struct sockaddr *)&a, al) == 0, "connect");
	*s = accept(l, NULL, NULL);
	must(*s >= 0, "accept");
}

/* Writes until the socket is full (pattern `seed`); returns the count. */
static size_t fill(int fd, uint32_t seed)
{
	size_t n = write_some(fd, sizeof(buf), seed, 0);
	must(n > 0 && n < sizeof(buf), "filling a connection");
	return n;
}

#define HALF_BYTES 1000

static int halfclosed(void)
{
	int l4 = listen_on(AF_INET, "127.0.0.1", 0), l6 = listen_on(AF_INET6, "::1", 0);
	/* Accepted sockets take the listener's receive buffer. */
	small_buffers(l4);
	small_buffers(l6);
	int c1, s1, c2, s2, c3, s3, c4, s4, c5, s5;
	/* 1 (IPv4) and 5 (IPv6): the client sent data and shut down writing:
	 * client FIN_WAIT2, server CLOSE_WAIT with the data unread. */
	pair_on(l4, &c1, &s1);
	pair_on(l6, &c5, &s5);
	write_all(c1, HALF_BYTES, 41);
	write_all(c5, HALF_BYTES, 51);
	must(shutdown(c1, SHUT_WR) == 0 && shutdown(c5, SHUT_WR) == 0, "shutdown");
	await_state(s1, 8, "server 1");
	await_state(c1, 5, "client 1");
	await_state(s5, 8, "server 5");
	await_state(c5, 5, "client 5");
	/* 2: the client filled the server's window and shut down: its FIN
	 * waits behind unsent data (FIN_WAIT1). */
	pair_on(l4, &c2, &s2);
	size_t n2 = fill(c2, 42);
	must(shutdown(c2, SHUT_WR) == 0, "shutdown");
	await_state(c2, 4, "client 2");
	/* 3: the client shut down; the server filled the client's window and
	 * shut down too: server LAST_ACK (its FIN unsent), client FIN_WAIT2. */
	pair_on(l4, &c3, &s3);
	must(shutdown(c3, SHUT_WR) == 0, "shutdown");
	await_state(s3, 8, "server 3");
	size_t n3 = fill(s3, 43);
	must(shutdown(s3, SHUT_WR) == 0, "shutdown");
	await_state(s3, 9, "server 3");
	/* 4: the client filled the server's window and shut down (FIN unsent),
	 * then the server shut down: the client has the server's FIN before
	 * its own was acknowledged (CLOSING), the server FIN_WAIT2. */
	pair_on(l4, &c4, &s4);
	size_t n4 = fill(c4, 44);
	must(shutdown(c4, SHUT_WR) == 0, "shutdown");
	await_state(c4, 4, "client 4");
	must(shutdown(s4, SHUT_WR) == 0, "shutdown");
	await_state(c4, 11, "client 4");
	await_state(s4, 5, "server 4");
	close(l4);
	close(l6);
	wl_write("ready", "%zu %zu %zu\n", n2, n3, n4);
	wl_wait_term();

	/* The states as they were, before anything is read. */
	expect_state(s1, 8, "server 1");
	expect_state(c1, 5, "client 1");
	expect_state(s5, 8, "server 5");
	expect_state(c5, 5, "client 5");
	expect_state(c2, 4, "client 2");
	/* Server 2 may already have the client's FIN: its restored receive
	 * buffer may take more than the one it filled. */
	if (tcp_state(s2) != 1)
		expect_state(s2, 8, "server 2");
	expect_state(s3, 9, "server 3");
	expect_state(c3, 5, "client 3");
	expect_state(c4, 11, "client 4");
	expect_state(s4, 5, "server 4");
	/* Our own shutdowns hold. */
	expect_epipe(c1, "client 1");
	expect_epipe(c5, "client 5");
	expect_epipe(c2, "client 2");
	expect_epipe(s3, "server 3");
	expect_epipe(c3, "client 3");
	expect_epipe(c4, "client 4");
	expect_epipe(s4, "server 4");
	/* The data, then end of file. */
	read_expect(s1, HALF_BYTES, 41, "server 1: the client's data");
	expect_eof(s1, "server 1");
	read_expect(s5, HALF_BYTES, 51, "server 5: the client's data");
	expect_eof(s5, "server 5");
	read_expect(s2, n2, 42, "server 2: the client's data");
	expect_eof(s2, "server 2");
	read_expect(c3, n3, 43, "client 3: the server's data");
	expect_eof(c3, "client 3");
	expect_eof(s3, "server 3");
	read_expect(s4, n4, 44, "server 4: the client's data");
	expect_eof(s4, "server 4");
	expect_eof(c4, "client 4");
	/* A half-closed connection still carries the other way: the servers
	 * in CLOSE_WAIT answer, their clients read it, then the end. */
	write_all(s1, 100, 45);
	write_all(s5, 100, 55);
	must(shutdown(s1, SHUT_WR) == 0 && shutdown(s5, SHUT_WR) == 0, "shutdown");
	read_expect(c1, 100, 45, "client 1: the server's answer");
	expect_eof(c1, "client 1");
	read_expect(c5, 100, 55, "client 5: the server's answer");
	expect_eof(c5, "client 5");
	/* Every FIN was acknowledged: the connections end (client 2 waits for
	 * its server's FIN). */
	for (int i = 0; i < 2000 && (tcp_state(c2) != 5 || tcp_state(s3) != 7 || tcp_state(c4) != 7); i++)
		wl_sleep_ms(5);
	expect_state(c2, 5, "client 2 at the end");
	expect_state(s3, 7, "server 3 at the end");
	expect_state(c4, 7, "client 4 at the end");
	return wl_finish();
}

/* halfserver: accepts one connection (from the test, on the host) whose
 * client sent CLIENT_BYTES (seed 2) and shut down writing; ready once the
 * server is in CLOSE_WAIT with the bytes unread. On SIGTERM it finds the
 * state, the bytes, then end of file, answers "OK <n>\n" and shuts down. */
static int halfserver(int port)
{
	int l = listen_on(AF_INET, "0.0.0.0", port);
	int s = accept(l, NULL, NULL);
	must(s >= 0, "accept");
	await_state(s, 8, "the server");
	for (int i = 0; i < 2000 && queued(s) < CLIENT_BYTES; i++)
		wl_sleep_ms(5);
	if (queued(s) < CLIENT_BYTES) {
		dprintf(2, "the client's %d bytes did not arrive\n", CLIENT_BYTES);
		return 2;
	}
	wl_write("ready", "1\n");
	wl_wait_term();
	expect_state(s, 8, "the server");
	read_expect(s, CLIENT_BYTES, 2, "the client's bytes");
	expect_eof(s, "the server");
	char ok[64];
	int n = snprintf(ok, sizeof(ok), "OK %d\n", CLIENT_BYTES);
	if (send(s, ok, (size_t)n, MSG_NOSIGNAL) != n)
		wl_fail("answering the client: %s", strerror(errno));
	if (shutdown(s, SHUT_WR) != 0)
		wl_fail("shutdown: %s", strerror(errno));
	/* The client acknowledges the answer and the FIN: the connection ends. */
	for (int i = 0; i < 2000 && tcp_state(s) != 7; i++)
		wl_sleep_ms(5);
	expect_state(s, 7, "the server at the end");
	return wl_finish();
}

/* synsent: a non-blocking connect to HOST:PORT (a listener of the test's
 * whose accept queue is full, so the SYN gets no answer): ready once in
 * SYN_SENT. On SIGTERM (the test has made room) the connect completes
 * within 10 s; the workload sends "HELLO\n" and expects "OK\n". */
static int synsent(const char *host, int port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	must(inet_pton(AF_INET, host, &a.sin_addr) == 1, "inet_pton");
	int c = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	must(c >= 0, "socket");
	must(connect(c, (struct sockaddr *)&a, sizeof(a)) < 0 && errno == EINPROGRESS, "connect in progress");
	await_state(c, 2, "the client");
	wl_write("ready", "1\n");
	wl_wait_term();
	struct pollfd p = { .fd = c, .events = POLLOUT };
	if (poll(&p, 1, 10000) != 1) {
		wl_fail("the connect did not complete within 10 s (state %s)", state_str(tcp_state(c)));
		return wl_finish();
	}
	int err = -1;
	socklen_t l = sizeof(err);
	if (getsockopt(c, SOL_SOCKET, SO_ERROR, &err, &l) != 0 || err != 0) {
		wl_fail("the connect failed: %s", strerror(err));
		return wl_finish();
	}
	expect_state(c, 1, "the client");
	struct sockaddr_in peer;
	l = sizeof(peer);
	if (getpeername(c, (struct sockaddr *)&peer, &l) != 0 || peer.sin_port != a.sin_port ||
	    peer.sin_addr.s_addr != a.sin_addr.s_addr)
		wl_fail("getpeername does not give %s:%d", host, port);
	int fl = fcntl(c, F_GETFL);
	if (!(fl & O_NONBLOCK))
		wl_fail("the socket lost O_NONBLOCK");
	if (send(c, "HELLO\n", 6, MSG_NOSIGNAL) != 6)
		wl_fail("sending: %s", strerror(errno));
	char ans[8] = { 0 };
	size_t have = 0;
	while (have < 3) {
		p.events = POLLIN;
		if (poll(&p, 1, 10000) != 1) {
			wl_fail("no answer within 10 s");
			break;
		}
		ssize_t r = recv(c, ans + have, 3 - have, 0);
		if (r <= 0) {
			wl_fail("reading the answer: %s", r ? strerror(errno) : "end of file");
			break;
		}
		have += (size_t)r;
	}
	if (have == 3 && memcmp(ans, "OK\n", 3) != 0)
		wl_fail("answer %.3s, expected OK", ans);
	return wl_finish();
}

/* unaccepted: two IPv4 clients and one IPv6 client connect to listeners
 * of the same process that do not accept them yet (ready once the
 * listeners' queues hold them). With `data` as the next argument, the first
 * client also sends a request the listener's end holds. On SIGTERM the
 * listeners accept them all, each accepted connection's peer is one of the
 * clients, and a message goes each way over each. */
static int listen_queue(int l)
{
	struct tcp_info ti;
	socklen_t len = sizeof(ti);
	if (getsockopt(l, IPPROTO_TCP, TCP_INFO, &ti, &len) != 0)
		return -1;
	return (int)ti.tcpi_unacked;
}

static void exchange(int l, int *c, int nc, const char *what)
{
	for (int k = 0; k < nc; k++) {
		struct pollfd p = { .fd = l, .events = POLLIN };
		if (poll(&p, 1, 10000) != 1) {
			wl_fail("%s: connection %d of %d not accepted within 10 s", what, k + 1, nc);
			return;
		}
		struct sockaddr_storage from;
		socklen_t fl = sizeof(from);
		int s = accept(l, (struct sockaddr *)&from, &fl);
		if (s < 0) {
			wl_fail("%s: accept: %s", what, strerror(errno));
			return;
		}
		int which = -1;
		for (int i = 0; i < nc; i++) {
			struct sockaddr_storage a;
			socklen_t al = sizeof(a);
			if (getsockname(c[i], (struct sockaddr *)&a, &al) == 0 && al == fl && !memcmp(&a, &from, al))
				which = i;
		}
		if (which < 0) {
			wl_fail("%s: accepted a connection from no client of ours", what);
			return;
		}
		write_all(c[which], 64, 60 + which);
		read_expect(s, 64, 60 + which, "a client's message");
		write_all(s, 32, 70 + which);
		read_expect(c[which], 32, 70 + which, "the server's answer");
		close(s);
	}
}

static int unaccepted(int data)
{
	int l4 = listen_on(AF_INET, "127.0.0.1", 0), l6 = listen_on(AF_INET6, "::1", 0);
	int c4[2] = { connect_to(l4), connect_to(l4) };
	int c6[1] = { connect_to(l6) };
	if (data)
		write_all(c4[0], 100, 80);
	for (int i = 0; i < 2000 && (listen_queue(l4) != 2 || listen_queue(l6) != 1); i++)
		wl_sleep_ms(5);
	if (listen_queue(l4) != 2 || listen_queue(l6) != 1) {
		dprintf(2, "setup: the listeners' queues hold %d and %d connections\n", listen_queue(l4), listen_queue(l6));
		return 2;
	}
	wl_write("ready", "1\n");
	wl_wait_term();
	if (listen_queue(l4) != 2 || listen_queue(l6) != 1)
		wl_fail("the listeners' queues hold %d and %d connections, expected 2 and 1", listen_queue(l4),
			listen_queue(l6));
	if (data) {
		/* The request is what the accepted connection reads first. */
		int s = accept(l4, NULL, NULL);
		read_expect(s, 100, 80, "the queued request");
		close(s);
		return wl_finish();
	}
	exchange(l4, c4, 2, "IPv4 listener");
	exchange(l6, c6, 1, "IPv6 listener");
	return wl_finish();
}

int main(int argc, char **argv)
{
	if (argc > 1 && !strcmp(argv[1], "unaccepted")) {
		int data = argc > 2 && !strcmp(argv[2], "data");
		wl_init(argc, argv, data ? 3 : 2);
		return unaccepted(data);
	}
	if (argc > 3 && !strcmp(argv[1], "synsent")) {
		wl_init(argc, argv, 4);
		return synsent(argv[2], atoi(argv[3]));
	}
	if (argc > 2 && !strcmp(argv[1], "halfserver")) {
		wl_init(argc, argv, 3);
		return halfserver(atoi(argv[2]));
	}
	if (argc > 1 && !strcmp(argv[1], "halfclosed")) {
		wl_init(argc, argv, 2);
		return halfclosed();
	}
	if (argc > 1 && !strcmp(argv[1], "loopback")) {
		wl_init(argc, argv, 2);
		return loopback();
	}
	if (argc > 2 && !strcmp(argv[1], "server")) {
		wl_init(argc, argv, 3);
		return server(atoi(argv[2]));
	}
	dprintf(2, "usage: tcp loopback DIR | tcp halfclosed DIR | tcp halfserver PORT DIR | tcp synsent HOST PORT DIR | tcp unaccepted [data] DIR | tcp server PORT DIR\n");
	return 2;
}
