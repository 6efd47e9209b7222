/* pty DIR: pty pairs of the sandbox's devpts with their line state.
 *
 * Pair A: master at fd 10 (O_NONBLOCK), slave at fd 11, raw mode, a window
 * size, exclusive mode. Pair C: master only at fd 12, left locked, packet
 * mode. A pair opened between them is closed again, so their indexes have
 * a gap (A is n, C is n + 2).
 *
 * Pair E: master at fd 16, its slave opened and closed: hung up. C's slave
 * was never opened: not hung up.
 * Pair D: master at fd 14, slave at fd 15, canonical without echo, holding
 * two whole lines, an end-of-file (^D) and a partial line, which must still
 * read as two lines, then end of file, then the partial one completed by what the master writes next.
 *
 * The child makes A's slave its controlling terminal in a new session,
 * opens /dev/tty at fd 13 and puts its own child (the grandchild) in a new process group, which it
 * makes the terminal's foreground group. The parent writes TO_SLAVE bytes
 * into the master and the child TO_MASTER bytes into the slave; nobody reads
 * them before SIGTERM.
 *
 * On SIGTERM the parent checks fd kinds and flags, both indexes, termios,
 * window size, lock, packet and exclusive modes, the session and the
 * foreground group as the master reports them, the queued bytes in both
 * directions, and that data still passes both ways; it forwards SIGTERM to
 * the child, which checks its session and controlling terminal from inside
 * (tcgetsid, tcgetpgrp) and that /dev/tty writes to the terminal, and forwards it to the grandchild, which checks
 * that its group is the foreground one and that it reads the terminal
 * through /dev/tty. Their verdicts go to
 * DIR/verdict-child and DIR/verdict-grandchild. */
#include "wl.h"

#include <poll.h>
#include <sys/ioctl.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <termios.h>

#define MA 10
#define SA 11
#define MC 12
#define DEVTTY 13
#define MD 14
#define SD 15
#define ME 16
#define CANON "line1\nline2\n\004part"
#define TO_SLAVE 300
#define TO_MASTER 200

static struct termios want;
static unsigned char buf[4096];

static int queued(int fd)
{
	int n = -1;
	if (ioctl(fd, FIONREAD, &n) != 0)
		return -1;
	return n;
}

/* Reads exactly n bytes from fd, waiting with poll (at most 5 s). */
static int read_n(int fd, unsigned char *p, size_t n)
{
	size_t got = 0;
	while (got < n) {
		struct pollfd pf = { .fd = fd, .events = POLLIN };
		if (poll(&pf, 1, 5000) <= 0)
			return (int)got;
		ssize_t r = read(fd, p + got, n - got);
		if (r < 0 && (errno == EAGAIN || errno == EINTR))
			continue;
		if (r <= 0)
			return (int)got;
		got += (size_t)r;
	}
	return (int)got;
}

static int finish_child_verdict(pid_t kid, const char *file, const char *who)
{
	int status = 0;
	if (kill(kid, SIGTERM) != 0)
		wl_fail("%s: cannot signal %d: %s", who, (int)kid, strerror(errno));
	else if (waitpid(kid, &status, 0) != kid)
		wl_fail("%s: waitpid(%d): %s", who, (int)kid, strerror(errno));
	char v[600];
	if (wl_read(file, v, sizeof(v)) < 0)
		wl_fail("%s wrote no verdict (wait status %#x)", file, status);
	else if (strcmp(v, "PASS") != 0)
		wl_fail("%s", v + (strncmp(v, "FAIL: ", 6) ? 0 : 6));
	return status;
}

static int grandchild(void)
{
	wl_wait_term();
	if (getpgrp() != getpid())
		wl_fail("grandchild: group %d, expected its own %d", (int)getpgrp(), (int)getpid());
	if (tcgetpgrp(SA) != getpgrp())
		wl_fail("grandchild: foreground group %d, not its group %d", (int)tcgetpgrp(SA),
			(int)getpgrp());
	/* In the foreground: /dev/tty reads what the master writes. */
	unsigned char b[4] = { 0 };
	if (write(MA, "in", 2) != 2 || read_n(DEVTTY, b, 2) != 2 || memcmp(b, "in", 2) != 0)
		wl_fail("grandchild: /dev/tty no longer reads from the terminal");
	return wl_finish_as("verdict-grandchild");
}

static int child(int sync_w)
{
	close(MC);
	if (setsid() < 0 || ioctl(SA, TIOCSCTTY, 0) != 0) {
		perror("setsid/TIOCSCTTY");
		_exit(2);
	}
	int t = open("/dev/tty", O_RDWR | O_CLOEXEC);
	if (t < 0 || (t != DEVTTY && (dup3(t, DEVTTY, O_CLOEXEC) != DEVTTY || close(t) != 0))) {
		perror("/dev/tty");
		_exit(2);
	}
	pid_t gc = fork();
	if (gc < 0) {
		perror("fork");
		_exit(2);
	}
	if (gc == 0) {
		setpgid(0, 0);
		close(sync_w);
		return grandchild();
	}
	if (setpgid(gc, gc) != 0 && errno != EACCES) {
		perror("setpgid");
		_exit(2);
	}
	signal(SIGTTOU, SIG_IGN);
	if (tcsetpgrp(SA, gc) != 0) {
		perror("tcsetpgrp");
		_exit(2);
	}
	signal(SIGTTOU, SIG_DFL);
	wl_fill(buf, TO_MASTER, 21);
	if (write(SA, buf, TO_MASTER) != TO_MASTER) {
		perror("write to the slave");
		_exit(2);
	}
	char c = 'x';
	if (write(sync_w, &c, 1) != 1)
		_exit(2);
	close(sync_w);

	wl_wait_term();
	if (getsid(0) != getpid())
		wl_fail("child: session %d, expected its own %d", (int)getsid(0), (int)getpid());
	if (tcgetsid(SA) != getpid())
		wl_fail("child: tcgetsid of its terminal is %d, expected %d: %s", (int)tcgetsid(SA),
			(int)getpid(), strerror(errno));
	if (tcgetpgrp(SA) != gc)
		wl_fail("child: foreground group %d, expected %d", (int)tcgetpgrp(SA), (int)gc);
	/* /dev/tty still reaches the terminal. */
	struct stat sb;
	if (fstat(DEVTTY, &sb) != 0 || !S_ISCHR(sb.st_mode) || sb.st_rdev != makedev(5, 0))
		wl_fail("child: fd %d is not /dev/tty", DEVTTY);
	unsigned char b[8] = { 0 };
	if (write(DEVTTY, "tty\n", 4) != 4 || read_n(MA, b, 4) != 4 || memcmp(b, "tty\n", 4) != 0)
		wl_fail("child: /dev/tty no longer writes to the terminal");
	int st = finish_child_verdict(gc, "verdict-grandchild", "child");
	if (!wl_failed() && (!WIFEXITED(st) || WEXITSTATUS(st) != 0))
		wl_fail("grandchild passed but its wait status is %#x", st);
	return wl_finish_as("verdict-child");
}

static int at(int fd, int f)
{
	if (f < 0 || (f != fd && (dup3(f, fd, O_CLOEXEC) != fd || close(f) != 0))) {
		dprintf(2, "fd %d: %s\n", fd, strerror(errno));
		exit(2);
	}
	return fd;
}

static int ptn(int fd)
{
	int n = -1;
	if (ioctl(fd, TIOCGPTN, &n) != 0)
		return -1;
	return n;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv, 1);
	at(MD, posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC));
	/* Pair E: its slave opened and closed again, the master hung up. */
	at(ME, posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC));
	int se = unlockpt(ME) == 0 ? open(ptsname(ME), O_RDWR | O_NOCTTY | O_CLOEXEC) : -1;
	if (se < 0 || close(se) != 0) {
		perror("pair E");
		return 2;
	}
	at(MA, posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC));
	int gap = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
	at(MC, posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC));
	if (gap < 0 || close(gap) != 0 || unlockpt(MA) != 0) {
		perror("ptys");
		return 2;
	}
	int ia = ptn(MA), ic = ptn(MC);
	at(SA, open(ptsname(MA), O_RDWR | O_NOCTTY | O_CLOEXEC));
	struct termios t;
	if (tcgetattr(SA, &t) != 0) {
		perror("tcgetattr");
		return 2;
	}
	cfmakeraw(&t);
	t.c_cc[VMIN] = 1;
	t.c_cc[VTIME] = 0;
	cfsetspeed(&t, B57600);
	struct winsize ws = { .ws_row = 37, .ws_col = 101, .ws_xpixel = 800, .ws_ypixel = 600 };
	int one = 1;
	if (tcsetattr(SA, TCSANOW, &t) != 0 || tcgetattr(SA, &want) != 0 ||
	    ioctl(SA, TIOCSWINSZ, &ws) != 0 ||
	    ioctl(MC, TIOCPKT, &one) != 0 || fcntl(MA, F_SETFL, O_RDWR | O_NONBLOCK) != 0) {
		perror("setting up the line");
		return 2;
	}
	int sync[2];
	if (pipe2(sync, O_CLOEXEC) != 0) {
		perror("pipe");
		return 2;
	}
	pid_t kid = fork();
	if (kid < 0) {
		perror("fork");
		return 2;
	}
	if (kid == 0) {
		close(sync[0]);
		return child(sync[1]);
	}
	close(sync[1]);
	char c;
	if (read(sync[0], &c, 1) != 1) {
		dprintf(2, "the child failed to set up its terminal\n");
		return 2;
	}
	close(sync[0]);
	/* Exclusive once the child has opened /dev/tty. */
	if (ioctl(SA, TIOCEXCL) != 0) {
		perror("TIOCEXCL");
		return 2;
	}
	/* Pair D: canonical, no echo, two whole lines and a partial one queued. */
	struct termios td;
	if (unlockpt(MD) != 0 || at(SD, open(ptsname(MD), O_RDWR | O_NOCTTY | O_CLOEXEC)) != SD ||
	    tcgetattr(SD, &td) != 0) {
		perror("pair D");
		return 2;
	}
	td.c_lflag = (td.c_lflag | ICANON) & ~(tcflag_t)(ECHO | ECHONL);
	if (tcsetattr(SD, TCSANOW, &td) != 0 || write(MD, CANON, strlen(CANON)) != (ssize_t)strlen(CANON)) {
		perror("pair D");
		return 2;
	}
	wl_fill(buf, TO_SLAVE, 12);
	if (write(MA, buf, TO_SLAVE) != TO_SLAVE) {
		perror("write to the master");
		return 2;
	}
	/* Ready once the line discipline holds both directions' bytes. */
	for (int i = 0; queued(SA) != TO_SLAVE || queued(MA) != TO_MASTER || queued(SD) != 12; i++) {
		if (i > 5000) {
			dprintf(2, "queues: %d and %d bytes\n", queued(SA), queued(MA));
			return 2;
		}
		wl_sleep_ms(1);
	}
	wl_write("ready", "%d %d\n", ia, ic);

	wl_wait_term();

	struct stat st;
	if (fstat(MA, &st) != 0 || !S_ISCHR(st.st_mode) || st.st_rdev != makedev(5, 2))
		wl_fail("fd %d is not a pty master", MA);
	if (ptn(MA) != ia)
		wl_fail("pty A has index %d, expected %d", ptn(MA), ia);
	if (ptn(MC) != ic)
		wl_fail("pty C has index %d, expected %d", ptn(MC), ic);
	if (fstat(SA, &st) != 0 || !S_ISCHR(st.st_mode) || (int)minor(st.st_rdev) != ia)
		wl_fail("fd %d is not the slave of pty %d", SA, ia);
	int fl = fcntl(MA, F_GETFL);
	if ((fl & O_ACCMODE) != O_RDWR || !(fl & O_NONBLOCK))
		wl_fail("master flags %#o", fl);
	if (!(fcntl(SA, F_GETFD) & FD_CLOEXEC))
		wl_fail("slave fd lost FD_CLOEXEC");
	struct termios now;
	if (tcgetattr(SA, &now) != 0)
		wl_fail("tcgetattr: %s", strerror(errno));
	if (wl_corrupt())
		now.c_lflag ^= ECHO;
	if (now.c_iflag != want.c_iflag || now.c_oflag != want.c_oflag ||
	    now.c_cflag != want.c_cflag || now.c_lflag != want.c_lflag ||
	    memcmp(now.c_cc, want.c_cc, sizeof(now.c_cc)) != 0 ||
	    cfgetospeed(&now) != cfgetospeed(&want))
		wl_fail("termios changed: iflag %#x oflag %#x cflag %#x lflag %#x (expected %#x %#x %#x %#x)",
			now.c_iflag, now.c_oflag, now.c_cflag, now.c_lflag, want.c_iflag, want.c_oflag,
			want.c_cflag, want.c_lflag);
	struct winsize w2 = { 0 };
	if (ioctl(MA, TIOCGWINSZ, &w2) != 0 || w2.ws_row != 37 || w2.ws_col != 101 ||
	    w2.ws_xpixel != 800 || w2.ws_ypixel != 600)
		wl_fail("window size %ux%u (%ux%u pixels)", w2.ws_row, w2.ws_col, w2.ws_xpixel,
			w2.ws_ypixel);
	int v = -1;
	if (ioctl(MA, TIOCGPTLCK, &v) != 0 || v != 0)
		wl_fail("pty A lock %d", v);
	if (ioctl(MC, TIOCGPTLCK, &v) != 0 || v != 1)
		wl_fail("pty C lock %d, expected locked", v);
	if (ioctl(MC, TIOCGPKT, &v) != 0 || v != 1)
		wl_fail("pty C packet mode %d", v);
	if (ioctl(MA, TIOCGPKT, &v) != 0 || v != 0)
		wl_fail("pty A packet mode %d", v);
	if (ioctl(SA, TIOCGEXCL, &v) != 0 || v != 1)
		wl_fail("pty A slave exclusive mode %d", v);
	pid_t sid = -1, pg = -1;
	if (ioctl(MA, TIOCGSID, &sid) != 0 || sid != kid)
		wl_fail("pty A is the terminal of session %d, expected %d", (int)sid, (int)kid);
	if (ioctl(MA, TIOCGPGRP, &pg) != 0 || pg == kid || getpgid(pg) != pg)
		wl_fail("pty A's foreground group is %d", (int)pg);
	/* The queued bytes, in both directions, then nothing more. */
	int qs = queued(SA), qm = queued(MA);
	if (qs != TO_SLAVE || qm != TO_MASTER)
		wl_fail("queued: %d bytes to the slave (expected %d), %d to the master (expected %d)",
			qs, TO_SLAVE, qm, TO_MASTER);
	memset(buf, 0, sizeof(buf));
	if (read_n(SA, buf, TO_SLAVE) != TO_SLAVE)
		wl_fail("the slave reads fewer than %d bytes", TO_SLAVE);
	else
		wl_expect("bytes queued to the slave", buf, TO_SLAVE, 12);
	memset(buf, 0, sizeof(buf));
	if (read_n(MA, buf, TO_MASTER) != TO_MASTER)
		wl_fail("the master reads fewer than %d bytes", TO_MASTER);
	else
		wl_expect("bytes queued to the master", buf, TO_MASTER, 21);
	/* Both ways still work. */
	if (write(MA, "ping\r\n", 6) != 6 || read_n(SA, buf, 6) != 6 || memcmp(buf, "ping\r\n", 6) != 0)
		wl_fail("master to slave no longer passes data unchanged");
	if (write(SA, "pong\n", 5) != 5 || read_n(MA, buf, 5) != 5 || memcmp(buf, "pong\n", 5) != 0)
		wl_fail("slave to master no longer passes data unchanged");
	if (queued(SA) != 0 || queued(MA) != 0)
		wl_fail("bytes left over: %d to the slave, %d to the master", queued(SA), queued(MA));
	/* C's slave was never opened: its master is not hung up; E's is. */
	struct pollfd pc = { .fd = MC, .events = POLLIN }, pe = { .fd = ME, .events = POLLIN };
	if (poll(&pc, 1, 0) < 0 || (pc.revents & POLLHUP))
		wl_fail("pty C's master is hung up (revents %#x)", pc.revents);
	if (poll(&pe, 1, 0) != 1 || !(pe.revents & POLLHUP))
		wl_fail("pty E's master is not hung up (revents %#x)", pe.revents);
	/* Pair D: the two lines one by one, then the partial line goes on. */
	char l[64] = { 0 };
	const char *want_lines[] = { "line1\n", "line2\n" };
	for (int i = 0; i < 2; i++) {
		memset(l, 0, sizeof(l));
		if (read(SD, l, sizeof(l)) != 6 || strcmp(l, want_lines[i]) != 0)
			wl_fail("pair D: line %d reads \"%s\"", i + 1, l);
	}
	/* Then the end-of-file (^D) typed after them. */
	if (read(SD, l, sizeof(l)) != 0)
		wl_fail("pair D: no end of file after the two lines");
	if (wl_corrupt())
		write(MD, "\n", 1);
	if (queued(SD) != 0)
		wl_fail("pair D: the partial line is readable (%d bytes)", queued(SD));
	memset(l, 0, sizeof(l));
	if (write(MD, "X\n", 2) != 2 || read(SD, l, sizeof(l)) != 6 || strcmp(l, "partX\n") != 0)
		wl_fail("pair D: the partial line goes on as \"%s\"", l);
	int status = finish_child_verdict(kid, "verdict-child", "parent");
	if (!wl_failed() && (!WIFEXITED(status) || WEXITSTATUS(status) != 0))
		wl_fail("child passed but its wait status is %#x", status);
	return wl_finish();
}
