/* unix DIR: unix sockets of every kind, with data queued, names, listen
 * queues and shutdown states, checked from inside after SIGTERM.
 *
 *   fd 10/11  stream socketpair: 150000 bytes queued 10->11, 777 bytes 11->10;
 *             fd 11 is O_NONBLOCK and has SO_SNDBUF 65536 (kernel: 131072)
 *   fd 12/13  datagram socketpair: datagrams of 100, 0 and 3000 bytes queued on 13
 *   fd 14/15  seqpacket socketpair: records of 10 and 20000 bytes queued on 15
 *   fd 16     stream listener at DIR/l.sock (mode 0640), backlog 7, with
 *   fd 17,18  two clients waiting to be accepted (17 first)
 *   fd 19/20  a connection accepted from an abstract listener @wl-unix-RAND
 *             (fd 21, still listening): 19 the client, bound to
 *             @wl-unix-RAND-c; 20 the accepted end; 5000 bytes queued 19->20
 *   fd 22     datagram socket bound to /tmp/wl-unix-RAND.sock (a private
 *             tmpfs in a sandbox) holding datagrams from fd 23 (bound to
 *             DIR/d.sock), then from an unnamed socket, then from fd 24
 *             (connected to fd 22)
 *   fd 25/26  stream pair, 26 shut down for writing after writing 300 bytes
 *   fd 27     stream end whose peer wrote 400 bytes and closed
 *   fd 28/29  stream socketpair held by a child (29), 64 bytes queued each way
 *   fd 30     datagram socket bound to DIR/e.sock holding a datagram from fd 23,
 *             then connected to fd 31 (bound to DIR/f.sock): it now takes
 *             datagrams from fd 31 only, yet keeps the one queued before
 *
 * After SIGTERM every queue reads back exactly, in order, with the senders'
 * names; then EAGAIN (or end of file after a shutdown or a closed peer);
 * names, peers, options and flags are as set; the waiting clients are
 * accepted in their order; every pair still carries new data. */
#include "wl.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <stddef.h>

static unsigned char big[150000 + 64];
static unsigned char got[150000 + 64];
static char abs_name[64], abs_client[64], tmp_path[108], lpath[108], dpath[108], epath[108], fpath[108];

static socklen_t mkaddr(struct sockaddr_un *a, const char *name, int abstract)
{
	memset(a, 0, sizeof(*a));
	a->sun_family = AF_UNIX;
	if (abstract) {
		size_t n = strlen(name);
		memcpy(a->sun_path + 1, name, n);
		return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n);
	}
	snprintf(a->sun_path, sizeof(a->sun_path), "%s", name);
	return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(name) + 1);
}

static int at(int fd, int want)
{
	if (fd < 0 || dup2(fd, want) != want) {
		dprintf(2, "setting up fd %d: %s\n", want, strerror(errno));
		exit(2);
	}
	if (fd != want)
		close(fd);
	return want;
}

static void must(int ok, const char *what)
{
	if (!ok) {
		dprintf(2, "setup: %s: %s\n", what, strerror(errno));
		exit(2);
	}
}

static int sock(int type)
{
	int fd = socket(AF_UNIX, type, 0);
	must(fd >= 0, "socket");
	return fd;
}

static void send_all(int fd, const void *p, size_t n)
{
	const unsigned char *c = p;
	while (n) {
		ssize_t w = send(fd, c, n, MSG_DONTWAIT);
		must(w > 0, "send");
		c += w;
		n -= (size_t)w;
	}
}

/* Reads exactly n bytes (the socket holds them all), then checks EAGAIN or EOF. */
static void expect_stream(int fd, size_t n, uint32_t seed, int then_eof, const char *what)
{
	size_t have = 0;
	while (have < n) {
		ssize_t r = recv(fd, got + have, n - have, MSG_DONTWAIT);
		if (r <= 0) {
			wl_fail("%s: read %zu of %zu bytes, then %s", what, have, n, r ? strerror(errno) : "end of file");
			return;
		}
		have += (size_t)r;
	}
	wl_expect(what, got, n, seed);
	char c;
	ssize_t r = recv(fd, &c, 1, MSG_DONTWAIT);
	if (then_eof && r != 0)
		wl_fail("%s: expected end of file after %zu bytes, got %zd (%s)", what, n, r, r < 0 ? strerror(errno) : "data");
	if (!then_eof && !(r < 0 && errno == EAGAIN))
		wl_fail("%s: more than %zu bytes queued, or the peer is gone (%zd)", what, n, r);
}

static void expect_packet(int fd, size_t n, uint32_t seed, const char *sender, int abstract_sender, const char *what)
{
	struct sockaddr_un from;
	socklen_t fl = sizeof(from);
	memset(&from, 0, sizeof(from));
	ssize_t r = recvfrom(fd, got, sizeof(got), MSG_DONTWAIT, (struct sockaddr *)&from, &fl);
	if (r != (ssize_t)n) {
		wl_fail("%s: got a packet of %zd bytes (%s), expected %zu", what, r, r < 0 ? strerror(errno) : "", n);
		return;
	}
	wl_expect(what, got, n, seed);
	if (!sender)
		return;
	struct sockaddr_un want;
	memset(&want, 0, sizeof(want));
	/* An unnamed sender gives no address at all. */
	socklen_t wl = sender[0] ? mkaddr(&want, sender, abstract_sender) : 0;
	if (fl != wl || memcmp(&from, &want, wl) != 0)
		wl_fail("%s: sender is %.*s (%u bytes), expected %s", what, (int)(fl > 2 ? fl - 2 : 0),
			from.sun_path[0] ? from.sun_path : from.sun_path + 1, (unsigned)fl, sender[0] ? sender : "(unnamed)");
}

static void expect_name(int fd, int peer, const char *name, int abstract, const char *what)
{
	struct sockaddr_un a, want;
	socklen_t l = sizeof(a);
	memset(&a, 0, sizeof(a));
	if ((peer ? getpeername(fd, (struct sockaddr *)&a, &l) : getsockname(fd, (struct sockaddr *)&a, &l)) != 0) {
		wl_fail("%s: %s", what, strerror(errno));
		return;
	}
	socklen_t wl = name ? mkaddr(&want, name, abstract) : offsetof(struct sockaddr_un, sun_path);
	if (l != wl || memcmp(&a, &want, wl) != 0)
		wl_fail("%s: name is %.*s (%u bytes), expected %s (%u bytes)", what, (int)(l > 2 ? l - 2 : 0),
			a.sun_path[0] ? a.sun_path : a.sun_path + 1, (unsigned)l, name ? name : "(unnamed)", (unsigned)wl);
}

static void still_works(int a, int b, const char *what)
{
	char buf[16];
	if (send(a, "ping", 4, MSG_DONTWAIT) != 4 || recv(b, buf, sizeof(buf), MSG_DONTWAIT) != 4 ||
	    memcmp(buf, "ping", 4) != 0)
		wl_fail("%s no longer carries data", what);
}

static int child_side(void)
{
	wl_wait_term();
	expect_stream(29, 64, 29, 0, "child: fd 29 queue");
	unsigned char p[64];
	wl_fill(p, 64, 28);
	send_all(29, p, 64);
	return wl_finish_as("verdict-child");
}

int main(int argc, char **argv)
{
	wl_init(argc, argv, 1);
	unsigned long long r = 0;
	must(getrandom(&r, sizeof(r), 0) == sizeof(r), "getrandom");
	snprintf(abs_name, sizeof(abs_name), "wl-unix-%llx", r);
	snprintf(abs_client, sizeof(abs_client), "wl-unix-%llx-c", r);
	snprintf(tmp_path, sizeof(tmp_path), "/tmp/wl-unix-%llx.sock", r);
	wl_path(lpath, sizeof(lpath), "l.sock");
	wl_path(dpath, sizeof(dpath), "d.sock");
	wl_path(epath, sizeof(epath), "e.sock");
	wl_path(fpath, sizeof(fpath), "f.sock");
	unlink(lpath);
	unlink(dpath);
	unlink(epath);
	unlink(fpath);
	struct sockaddr_un a;
	int sv[2];

	/* 10/11: stream pair with data both ways. */
	must(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0, "socketpair");
	at(sv[0], 10), at(sv[1], 11);
	int sb = 65536;
	must(setsockopt(11, SOL_SOCKET, SO_SNDBUF, &sb, sizeof(sb)) == 0, "SO_SNDBUF");
	must(setsockopt(10, SOL_SOCKET, SO_SNDBUF, (int[]){ 400000 }, sizeof(int)) == 0, "SO_SNDBUF");
	wl_fill(big, 150000, 10);
	send_all(10, big, 150000);
	wl_fill(big, 777, 11);
	send_all(11, big, 777);
	fcntl(11, F_SETFL, O_NONBLOCK);

	/* 12/13: datagram pair. */
	must(socketpair(AF_UNIX, SOCK_DGRAM, 0, sv) == 0, "socketpair dgram");
	at(sv[0], 12), at(sv[1], 13);
	wl_fill(big, 100, 121);
	must(send(12, big, 100, 0) == 100, "dgram 1");
	must(send(12, big, 0, 0) == 0, "dgram 2");
	wl_fill(big, 3000, 123);
	must(send(12, big, 3000, 0) == 3000, "dgram 3");

	/* 14/15: seqpacket pair. */
	must(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv) == 0, "socketpair seqpacket");
	at(sv[0], 14), at(sv[1], 15);
	wl_fill(big, 10, 141);
	must(send(14, big, 10, 0) == 10, "record 1");
	wl_fill(big, 20000, 142);
	must(send(14, big, 20000, 0) == 20000, "record 2");

	/* 16: path listener with two waiting clients. */
	at(sock(SOCK_STREAM), 16);
	must(bind(16, (struct sockaddr *)&a, mkaddr(&a, lpath, 0)) == 0, "bind l.sock");
	must(chmod(lpath, 0640) == 0, "chmod l.sock");
	must(listen(16, 7) == 0, "listen");
	at(sock(SOCK_STREAM), 17);
	must(connect(17, (struct sockaddr *)&a, mkaddr(&a, lpath, 0)) == 0, "connect 17");
	at(sock(SOCK_STREAM), 18);
	must(connect(18, (struct sockaddr *)&a, mkaddr(&a, lpath, 0)) == 0, "connect 18");

	/* 19/20/21: abstract listener, a named client, an accepted connection. */
	at(sock(SOCK_STREAM), 21);
	must(bind(21, (struct sockaddr *)&a, mkaddr(&a, abs_name, 1)) == 0, "bind abstract");
	must(listen(21, 4) == 0, "listen abstract");
	at(sock(SOCK_STREAM), 19);
	must(bind(19, (struct sockaddr *)&a, mkaddr(&a, abs_client, 1)) == 0, "bind abstract client");
	must(connect(19, (struct sockaddr *)&a, mkaddr(&a, abs_name, 1)) == 0, "connect abstract");
	at(accept(21, NULL, NULL), 20);
	wl_fill(big, 5000, 19);
	send_all(19, big, 5000);

	/* 22/23/24: named datagram sockets. */
	at(sock(SOCK_DGRAM), 22);
	unlink(tmp_path);
	must(bind(22, (struct sockaddr *)&a, mkaddr(&a, tmp_path, 0)) == 0, "bind /tmp dgram");
	at(sock(SOCK_DGRAM), 23);
	must(bind(23, (struct sockaddr *)&a, mkaddr(&a, dpath, 0)) == 0, "bind d.sock");
	socklen_t tl = mkaddr(&a, tmp_path, 0);
	wl_fill(big, 222, 221);
	must(sendto(23, big, 222, 0, (struct sockaddr *)&a, tl) == 222, "dgram from 23");
	int anon = sock(SOCK_DGRAM);
	wl_fill(big, 333, 222);
	must(sendto(anon, big, 333, 0, (struct sockaddr *)&a, tl) == 333, "dgram from unnamed");
	close(anon);
	at(sock(SOCK_DGRAM), 24);
	must(connect(24, (struct sockaddr *)&a, tl) == 0, "connect 24");
	wl_fill(big, 444, 223);
	must(send(24, big, 444, 0) == 444, "dgram from 24");

	/* 30/31: a datagram queued before its receiver connected elsewhere. */
	at(sock(SOCK_DGRAM), 30);
	must(bind(30, (struct sockaddr *)&a, mkaddr(&a, epath, 0)) == 0, "bind e.sock");
	wl_fill(big, 555, 301);
	must(sendto(23, big, 555, 0, (struct sockaddr *)&a, mkaddr(&a, epath, 0)) == 555, "dgram 23 -> 30");
	at(sock(SOCK_DGRAM), 31);
	must(bind(31, (struct sockaddr *)&a, mkaddr(&a, fpath, 0)) == 0, "bind f.sock");
	must(connect(30, (struct sockaddr *)&a, mkaddr(&a, fpath, 0)) == 0, "connect 30 -> 31");

	/* 25/26: a half-closed pair. */
	must(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0, "socketpair 25");
	at(sv[0], 25), at(sv[1], 26);
	wl_fill(big, 300, 26);
	send_all(26, big, 300);
	must(shutdown(26, SHUT_WR) == 0, "shutdown 26");

	/* 27: the peer wrote and closed. */
	must(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0, "socketpair 27");
	at(sv[0], 27);
	wl_fill(big, 400, 27);
	send_all(sv[1], big, 400);
	close(sv[1]);

	/* 28/29: a pair shared with a child. */
	must(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0, "socketpair 28");
	at(sv[0], 28), at(sv[1], 29);
	pid_t kid = fork();
	must(kid >= 0, "fork");
	if (kid == 0) {
		for (int fd = 10; fd <= 31; fd++)
			if (fd != 29)
				close(fd);
		return child_side();
	}
	close(29);
	wl_fill(big, 64, 29);
	send_all(28, big, 64);

	wl_write("ready", "%d\n", (int)kid);
	wl_wait_term();

	if (kill(kid, SIGTERM) != 0)
		wl_fail("cannot signal the child: %s", strerror(errno));
	if (wl_corrupt()) { /* consume one queued byte */
		char c;
		(void)!recv(11, &c, 1, MSG_DONTWAIT);
	}
	expect_stream(11, 150000, 10, 0, "fd 11 queue");
	expect_stream(10, 777, 11, 0, "fd 10 queue");
	int v = 0;
	socklen_t vl = sizeof(v);
	getsockopt(11, SOL_SOCKET, SO_SNDBUF, &v, &vl);
	if (v != 131072)
		wl_fail("fd 11: SO_SNDBUF is %d, expected 131072", v);
	if (!(fcntl(11, F_GETFL) & O_NONBLOCK))
		wl_fail("fd 11 lost O_NONBLOCK");
	if (fcntl(10, F_GETFL) & O_NONBLOCK)
		wl_fail("fd 10 became O_NONBLOCK");
	still_works(10, 11, "pair 10/11");

	expect_packet(13, 100, 121, NULL, 0, "fd 13 datagram 1");
	expect_packet(13, 0, 0, NULL, 0, "fd 13 datagram 2");
	expect_packet(13, 3000, 123, NULL, 0, "fd 13 datagram 3");
	if (recv(13, got, 1, MSG_DONTWAIT) >= 0 || errno != EAGAIN)
		wl_fail("fd 13 holds more than 3 datagrams");
	still_works(12, 13, "datagram pair 12/13");

	expect_packet(15, 10, 141, NULL, 0, "fd 15 record 1");
	expect_packet(15, 20000, 142, NULL, 0, "fd 15 record 2");
	still_works(14, 15, "seqpacket pair 14/15");

	struct stat st;
	if (stat(lpath, &st) != 0 || !S_ISSOCK(st.st_mode) || (st.st_mode & 0777) != 0640)
		wl_fail("%s is not a socket file of mode 0640 (mode %o)", lpath, st.st_mode);
	expect_name(16, 0, lpath, 0, "fd 16 name");
	fcntl(16, F_SETFL, O_NONBLOCK);
	for (int i = 0; i < 2; i++) {
		int c = accept4(16, NULL, NULL, SOCK_NONBLOCK);
		if (c < 0) {
			wl_fail("listener fd 16: waiting client %d was not there to accept: %s", i + 1, strerror(errno));
			break;
		}
		/* The clients say who they are; the first accepted must be fd 17. */
		send(i == 0 ? 17 : 18, i == 0 ? "A" : "B", 1, 0);
		char who = 0;
		if (recv(c, &who, 1, 0) != 1 || who != (i == 0 ? 'A' : 'B'))
			wl_fail("accepted connection %d on fd 16 came from client %c, expected %c", i + 1, who, i == 0 ? 'A' : 'B');
		expect_name(c, 0, lpath, 0, "accepted connection's name");
		close(c);
	}
	if (accept4(16, NULL, NULL, SOCK_NONBLOCK) >= 0 || errno != EAGAIN)
		wl_fail("listener fd 16 had more than two connections waiting");
	expect_name(17, 1, lpath, 0, "fd 17 peer name");

	expect_stream(20, 5000, 19, 0, "fd 20 queue");
	expect_name(19, 0, abs_client, 1, "fd 19 name");
	expect_name(19, 1, abs_name, 1, "fd 19 peer name");
	expect_name(20, 0, abs_name, 1, "fd 20 name");
	expect_name(20, 1, abs_client, 1, "fd 20 peer name");
	expect_name(21, 0, abs_name, 1, "fd 21 name");
	still_works(19, 20, "accepted connection 19/20");
	{
		int c = socket(AF_UNIX, SOCK_STREAM, 0);
		if (connect(c, (struct sockaddr *)&a, mkaddr(&a, abs_name, 1)) != 0)
			wl_fail("connecting to the abstract listener: %s", strerror(errno));
		close(c);
	}

	expect_packet(22, 222, 221, dpath, 0, "fd 22 datagram from fd 23");
	expect_packet(22, 333, 222, "", 0, "fd 22 datagram from an unnamed socket");
	expect_packet(22, 444, 223, "", 0, "fd 22 datagram from fd 24");
	expect_name(22, 0, tmp_path, 0, "fd 22 name");
	expect_name(24, 1, tmp_path, 0, "fd 24 peer name");
	if (send(24, "x", 1, 0) != 1 || recv(22, got, 10, MSG_DONTWAIT) != 1)
		wl_fail("fd 24 is no longer connected to fd 22");

	expect_stream(25, 300, 26, 1, "fd 25 queue (peer shut down)");
	signal(SIGPIPE, SIG_IGN);
	if (!(send(26, "x", 1, 0) < 0 && errno == EPIPE))
		wl_fail("fd 26 can write after its shutdown");
	if (send(25, "y", 1, 0) != 1 || recv(26, got, 1, MSG_DONTWAIT) != 1)
		wl_fail("fd 25 can no longer write to fd 26");

	expect_stream(27, 400, 27, 1, "fd 27 queue (peer closed)");

	expect_packet(30, 555, 301, dpath, 0, "fd 30 datagram from fd 23 (queued before fd 30 connected)");
	expect_name(30, 1, fpath, 0, "fd 30 peer name");
	if (sendto(23, "z", 1, 0, (struct sockaddr *)&a, mkaddr(&a, epath, 0)) >= 0 || errno != EPERM)
		wl_fail("fd 30 takes datagrams from fd 23 though it is connected to fd 31");
	if (send(31, "w", 1, 0) >= 0)
		wl_fail("fd 31 could send without being connected");
	if (sendto(31, "w", 1, 0, (struct sockaddr *)&a, mkaddr(&a, epath, 0)) != 1 || recv(30, got, 4, MSG_DONTWAIT) != 1)
		wl_fail("fd 31 -> fd 30 carries no datagram");

	int status = 0;
	if (waitpid(kid, &status, 0) != kid)
		wl_fail("waitpid: %s", strerror(errno));
	expect_stream(28, 64, 28, 1, "fd 28 queue (written by the child after SIGTERM)");
	char cv[600];
	if (wl_read("verdict-child", cv, sizeof(cv)) < 0)
		wl_fail("the child wrote no verdict (status %#x)", status);
	else if (strcmp(cv, "PASS") != 0)
		wl_fail("child: %s", cv);
	unlink(tmp_path);
	return wl_finish();
}
