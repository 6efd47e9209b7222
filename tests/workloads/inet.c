/* inet DIR: TCP listeners and UDP sockets with the options programs set,
 * checked from inside after SIGTERM.
 *
 *   fd 10  TCP listener on 0.0.0.0:P (P chosen by the kernel), backlog 12,
 *          SO_REUSEADDR, SO_REUSEPORT, SO_KEEPALIVE with TCP_KEEPIDLE 77,
 *          TCP_KEEPINTVL 11, TCP_KEEPCNT 5, TCP_NODELAY, SO_RCVBUF 50000,
 *          SO_SNDBUF 60000, O_NONBLOCK
 *   fd 11  TCP listener on [::1]:Q, IPV6_V6ONLY
 *   fd 12  TCP listener on [::]:R, dual-stack (IPV6_V6ONLY off)
 *   fd 13  UDP socket bound to 127.0.0.1:U
 *   fd 14  UDP socket connected to 127.0.0.1:U, bound by the kernel
 *   fd 15  TCP socket bound to 127.0.0.1:S, neither listening nor connected
 *   fd 16  TCP socket never bound
 *   fd 17  UDP socket bound to 0.0.0.0:W
 *   fd 18  a connection accepted on fd 11 that has ended (this side shut
 *          down, the peer closed): still open, in state CLOSE, its address
 *          [::1]:Q, the listener's port (as a server thread holds a
 *          connection between its shutdown and its close)
 *
 * Queued for fd 13: datagrams of 100 and 200 bytes from fd 14, then 300
 * bytes from fd 17; for fd 14: 400 bytes from fd 13.
 *
 * After SIGTERM: every address and option is as it was; each listener
 * accepts a connection made to its address and carries data both ways; the
 * UDP pair carries datagrams both ways; fd 15 can listen on its address;
 * fd 18 is a TCP socket in state CLOSE. */
#include "wl.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>

static void must(int ok, const char *what)
{
	if (!ok) {
		dprintf(2, "setup: %s: %s\n", what, strerror(errno));
		exit(2);
	}
}

static int at(int fd, int want)
{
	must(fd >= 0 && dup2(fd, want) == want, "dup2");
	if (fd != want)
		close(fd);
	return want;
}

static void setint(int fd, int level, int opt, int v, const char *what)
{
	must(setsockopt(fd, level, opt, &v, sizeof(v)) == 0, what);
}

static int getint(int fd, int level, int opt)
{
	int v = -1;
	socklen_t l = sizeof(v);
	if (getsockopt(fd, level, opt, &v, &l) != 0)
		return -12345;
	return v;
}

static void expect_int(int fd, int level, int opt, int want, const char *what)
{
	int v = getint(fd, level, opt);
	if (v != want)
		wl_fail("fd %d: %s is %d, expected %d", fd, what, v, want);
}

static struct sockaddr_storage names[20];

static void remember(int fd)
{
	socklen_t l = sizeof(names[fd]);
	must(getsockname(fd, (struct sockaddr *)&names[fd], &l) == 0, "getsockname");
}

static void expect_same_name(int fd)
{
	struct sockaddr_storage s;
	socklen_t l = sizeof(s);
	memset(&s, 0, sizeof(s));
	if (getsockname(fd, (struct sockaddr *)&s, &l) != 0 || memcmp(&s, &names[fd], l) != 0)
		wl_fail("fd %d: its address changed", fd);
}

static unsigned char got[1000];

/* The next datagram on `fd`: n bytes of the pattern, from fd `from`'s port on 127.0.0.1. */
static void expect_datagram(int fd, size_t n, uint32_t seed, int from)
{
	struct sockaddr_in src;
	socklen_t sl = sizeof(src);
	ssize_t r = recvfrom(fd, got, sizeof(got), MSG_DONTWAIT, (struct sockaddr *)&src, &sl);
	if (r != (ssize_t)n) {
		wl_fail("fd %d: a datagram of %zd bytes (%s), expected %zu", fd, r, r < 0 ? strerror(errno) : "", n);
		return;
	}
	if (wl_corrupt() && seed == 1701)
		got[7] ^= 1;
	char what[64];
	snprintf(what, sizeof(what), "fd %d: datagram from fd %d", fd, from);
	wl_expect(what, got, n, seed);
	struct sockaddr_in *want = (struct sockaddr_in *)&names[from];
	if (src.sin_port != want->sin_port || src.sin_addr.s_addr != htonl(INADDR_LOOPBACK))
		wl_fail("fd %d: datagram from port %d, expected fd %d's port %d", fd, ntohs(src.sin_port), from,
			ntohs(want->sin_port));
}

/* Datagrams queued on `fd`, counted by peeking (SO_PEEK_OFF put back off). */
static int queued_datagrams(int fd)
{
	int n = 0, zero = 0, off = -1;
	setsockopt(fd, SOL_SOCKET, SO_PEEK_OFF, &zero, sizeof(zero));
	while (n < 100 && recv(fd, got, sizeof(got), MSG_PEEK | MSG_DONTWAIT) >= 0)
		n++;
	setsockopt(fd, SOL_SOCKET, SO_PEEK_OFF, &off, sizeof(off));
	return n;
}

static char buf0[16];

/* The TCP state of `fd` (TCP_INFO), or -1. */
static int tcp_state(int fd)
{
	struct tcp_info ti;
	socklen_t l = sizeof(ti);
	if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &l) != 0)
		return -1;
	return ti.tcpi_state;
}

static int port_of(int fd)
{
	struct sockaddr_storage *s = &names[fd];
	return ntohs(s->ss_family == AF_INET ? ((struct sockaddr_in *)s)->sin_port
					     : ((struct sockaddr_in6 *)s)->sin6_port);
}

/* Connects to the listener at fd `l` through `family`/`addr`, accepts,
 * and exchanges data both ways. */
static void exercise_listener(int l, int family, const char *addr)
{
	struct sockaddr_storage a;
	memset(&a, 0, sizeof(a));
	socklen_t al;
	if (family == AF_INET) {
		struct sockaddr_in *s = (struct sockaddr_in *)&a;
		s->sin_family = AF_INET;
		s->sin_port = htons((uint16_t)port_of(l));
		inet_pton(AF_INET, addr, &s->sin_addr);
		al = sizeof(*s);
	} else {
		struct sockaddr_in6 *s = (struct sockaddr_in6 *)&a;
		s->sin6_family = AF_INET6;
		s->sin6_port = htons((uint16_t)port_of(l));
		inet_pton(AF_INET6, addr, &s->sin6_addr);
		al = sizeof(*s);
	}
	int c = socket(family, SOCK_STREAM, 0);
	if (connect(c, (struct sockaddr *)&a, al) != 0) {
		wl_fail("fd %d: connecting to %s port %d: %s", l, addr, port_of(l), strerror(errno));
		close(c);
		return;
	}
	struct pollfd p = { .fd = l, .events = POLLIN };
	int s = poll(&p, 1, 5000) == 1 ? accept(l, NULL, NULL) : -1;
	char buf[8] = "";
	if (s < 0 || send(c, "hi", 2, 0) != 2 || recv(s, buf, sizeof(buf), 0) != 2 || send(s, "ho", 2, 0) != 2 ||
	    recv(c, buf + 2, sizeof(buf) - 2, 0) != 2 || memcmp(buf, "hiho", 4) != 0)
		wl_fail("fd %d: a connection to %s did not carry data (%s)", l, addr, strerror(errno));
	if (s >= 0)
		close(s);
	close(c);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv, 1);
	struct sockaddr_in a4;
	struct sockaddr_in6 a6;

	at(socket(AF_INET, SOCK_STREAM, 0), 10);
	setint(10, SOL_SOCKET, SO_REUSEADDR, 1, "SO_REUSEADDR");
	setint(10, SOL_SOCKET, SO_REUSEPORT, 1, "SO_REUSEPORT");
	setint(10, SOL_SOCKET, SO_KEEPALIVE, 1, "SO_KEEPALIVE");
	setint(10, IPPROTO_TCP, TCP_KEEPIDLE, 77, "TCP_KEEPIDLE");
	setint(10, IPPROTO_TCP, TCP_KEEPINTVL, 11, "TCP_KEEPINTVL");
	setint(10, IPPROTO_TCP, TCP_KEEPCNT, 5, "TCP_KEEPCNT");
	setint(10, IPPROTO_TCP, TCP_NODELAY, 1, "TCP_NODELAY");
	setint(10, SOL_SOCKET, SO_RCVBUF, 50000, "SO_RCVBUF");
	setint(10, SOL_SOCKET, SO_SNDBUF, 60000, "SO_SNDBUF");
	memset(&a4, 0, sizeof(a4));
	a4.sin_family = AF_INET;
	must(bind(10, (struct sockaddr *)&a4, sizeof(a4)) == 0, "bind 10");
	must(listen(10, 12) == 0, "listen 10");
	fcntl(10, F_SETFL, O_NONBLOCK);

	at(socket(AF_INET6, SOCK_STREAM, 0), 11);
	setint(11, IPPROTO_IPV6, IPV6_V6ONLY, 1, "IPV6_V6ONLY");
	memset(&a6, 0, sizeof(a6));
	a6.sin6_family = AF_INET6;
	a6.sin6_addr = in6addr_loopback;
	must(bind(11, (struct sockaddr *)&a6, sizeof(a6)) == 0, "bind 11");
	must(listen(11, 3) == 0, "listen 11");

	at(socket(AF_INET6, SOCK_STREAM, 0), 12);
	setint(12, IPPROTO_IPV6, IPV6_V6ONLY, 0, "IPV6_V6ONLY off");
	a6.sin6_addr = in6addr_any;
	must(bind(12, (struct sockaddr *)&a6, sizeof(a6)) == 0, "bind 12");
	must(listen(12, 5) == 0, "listen 12");

	at(socket(AF_INET, SOCK_DGRAM, 0), 13);
	a4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	must(bind(13, (struct sockaddr *)&a4, sizeof(a4)) == 0, "bind 13");
	remember(13);
	at(socket(AF_INET, SOCK_DGRAM, 0), 14);
	must(connect(14, (struct sockaddr *)&names[13], sizeof(a4)) == 0, "connect 14");

	at(socket(AF_INET, SOCK_STREAM, 0), 15);
	a4.sin_port = 0;
	must(bind(15, (struct sockaddr *)&a4, sizeof(a4)) == 0, "bind 15");
	at(socket(AF_INET, SOCK_STREAM, 0), 16);
	at(socket(AF_INET, SOCK_DGRAM, 0), 17);
	a4.sin_addr.s_addr = htonl(INADDR_ANY);
	a4.sin_port = 0;
	must(bind(17, (struct sockaddr *)&a4, sizeof(a4)) == 0, "bind 17");
	for (int fd = 10; fd <= 17; fd++)
		remember(fd);
	{
		int c = socket(AF_INET6, SOCK_STREAM, 0);
		must(c >= 0 && connect(c, (struct sockaddr *)&names[11], sizeof(a6)) == 0, "connect to 11");
		at(accept(11, NULL, NULL), 18);
		must(shutdown(18, SHUT_WR) == 0, "shutdown 18");
		must(read(c, buf0, sizeof(buf0)) == 0, "EOF at the peer of 18");
		close(c);
		/* The peer's FIN ends the connection: this side goes to CLOSE. */
		for (int i = 0; i < 5000 && tcp_state(18) != TCP_CLOSE; i++)
			wl_sleep_ms(1);
		must(tcp_state(18) == TCP_CLOSE, "fd 18 in state CLOSE");
	}
	static unsigned char dg[400];
	wl_fill(dg, 100, 1401);
	must(send(14, dg, 100, 0) == 100, "datagram 14 -> 13");
	wl_fill(dg, 200, 1402);
	must(send(14, dg, 200, 0) == 200, "datagram 14 -> 13");
	wl_fill(dg, 300, 1701);
	must(sendto(17, dg, 300, 0, (struct sockaddr *)&names[13], sizeof(a4)) == 300, "datagram 17 -> 13");
	wl_fill(dg, 400, 1301);
	must(sendto(13, dg, 400, 0, (struct sockaddr *)&names[14], sizeof(a4)) == 400, "datagram 13 -> 14");
	/* Every datagram queued before ready (loopback delivery may be deferred). */
	for (int i = 0; i < 5000 && (queued_datagrams(13) < 3 || queued_datagrams(14) < 1); i++)
		wl_sleep_ms(1);
	wl_write("ready", "%d\n", port_of(10));
	wl_wait_term();

	if (wl_corrupt())
		setint(10, IPPROTO_TCP, TCP_KEEPIDLE, 78, "corrupt");
	for (int fd = 10; fd <= 17; fd++)
		expect_same_name(fd);
	expect_datagram(13, 100, 1401, 14);
	expect_datagram(13, 200, 1402, 14);
	expect_datagram(13, 300, 1701, 17);
	expect_datagram(14, 400, 1301, 13);
	if (recv(13, got, sizeof(got), MSG_DONTWAIT) >= 0 || recv(14, got, sizeof(got), MSG_DONTWAIT) >= 0)
		wl_fail("more datagrams queued than were sent");
	expect_int(10, SOL_SOCKET, SO_REUSEADDR, 1, "SO_REUSEADDR");
	expect_int(10, SOL_SOCKET, SO_REUSEPORT, 1, "SO_REUSEPORT");
	expect_int(10, SOL_SOCKET, SO_KEEPALIVE, 1, "SO_KEEPALIVE");
	expect_int(10, IPPROTO_TCP, TCP_KEEPIDLE, 77, "TCP_KEEPIDLE");
	expect_int(10, IPPROTO_TCP, TCP_KEEPINTVL, 11, "TCP_KEEPINTVL");
	expect_int(10, IPPROTO_TCP, TCP_KEEPCNT, 5, "TCP_KEEPCNT");
	expect_int(10, IPPROTO_TCP, TCP_NODELAY, 1, "TCP_NODELAY");
	expect_int(10, SOL_SOCKET, SO_RCVBUF, 100000, "SO_RCVBUF");
	expect_int(10, SOL_SOCKET, SO_SNDBUF, 120000, "SO_SNDBUF");
	expect_int(10, SOL_SOCKET, SO_ACCEPTCONN, 1, "SO_ACCEPTCONN");
	if (!(fcntl(10, F_GETFL) & O_NONBLOCK))
		wl_fail("fd 10 lost O_NONBLOCK");
	expect_int(11, IPPROTO_IPV6, IPV6_V6ONLY, 1, "IPV6_V6ONLY");
	expect_int(12, IPPROTO_IPV6, IPV6_V6ONLY, 0, "IPV6_V6ONLY");
	expect_int(11, SOL_SOCKET, SO_REUSEADDR, 0, "SO_REUSEADDR");
	expect_int(15, SOL_SOCKET, SO_ACCEPTCONN, 0, "SO_ACCEPTCONN");
	expect_int(16, SOL_SOCKET, SO_ACCEPTCONN, 0, "SO_ACCEPTCONN");

	exercise_listener(10, AF_INET, "127.0.0.1");
	exercise_listener(11, AF_INET6, "::1");
	exercise_listener(12, AF_INET6, "::1");
	exercise_listener(12, AF_INET, "127.0.0.1");

	char buf[16] = "";
	if (send(14, "u1", 2, 0) != 2 || recv(13, buf, sizeof(buf), MSG_DONTWAIT) != 2)
		wl_fail("UDP fd 14 -> fd 13 carries no datagram");
	struct sockaddr_storage from;
	socklen_t fl = sizeof(from);
	if (sendto(13, "u2", 2, 0, (struct sockaddr *)&names[14], sizeof(a4)) != 2 ||
	    recvfrom(14, buf, sizeof(buf), MSG_DONTWAIT, (struct sockaddr *)&from, &fl) != 2 ||
	    memcmp(&from, &names[13], sizeof(a4)) != 0)
		wl_fail("UDP fd 13 -> fd 14 carries no datagram, or not from fd 13's address");

	must(listen(15, 1) == 0 || (wl_fail("fd 15 cannot listen: %s", strerror(errno)), 1), "listen 15");
	if (tcp_state(18) != TCP_CLOSE)
		wl_fail("fd 18: TCP state %d, expected CLOSE", tcp_state(18));
	wl_pass_note("port=%d", port_of(10));
	return wl_finish();
}
