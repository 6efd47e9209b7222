/* pipe DIR: a pipe holding unread data between two processes.
 *
 * The parent keeps the write end at fd 20, its child the read end at fd 21.
 * The parent writes PIPE_BYTES bytes of a pattern, which nobody reads before
 * SIGTERM. On SIGTERM the parent forwards it to the child; the child checks
 * that exactly PIPE_BYTES bytes are queued (FIONREAD), reads and checks them
 * and writes DIR/verdict-child; the parent checks its own end, reaps the
 * child, checks that writing now fails with EPIPE (the child held the only
 * read end) and writes DIR/verdict from both. */
#include "wl.h"

#include <sys/ioctl.h>
#include <sys/wait.h>

#define PIPE_BYTES (40000 + 123)
#define WFD 20
#define RFD 21

static unsigned char buf[PIPE_BYTES + 1];

static int check_fd(int fd, int want_acc, const char *who)
{
	struct stat st;
	if (fstat(fd, &st) != 0) {
		wl_fail("%s: fd %d is not open: %s", who, fd, strerror(errno));
		return -1;
	}
	if (!S_ISFIFO(st.st_mode)) {
		wl_fail("%s: fd %d is not a pipe (mode %o)", who, fd, st.st_mode);
		return -1;
	}
	int fl = fcntl(fd, F_GETFL);
	if ((fl & O_ACCMODE) != want_acc)
		wl_fail("%s: fd %d has access mode %d, expected %d", who, fd, fl & O_ACCMODE, want_acc);
	return 0;
}

static int child(void)
{
	wl_wait_term();
	if (check_fd(RFD, O_RDONLY, "child") == 0) {
		int queued = -1;
		if (ioctl(RFD, FIONREAD, &queued) != 0 || queued != PIPE_BYTES)
			wl_fail("child: %d bytes queued in the pipe, expected %d", queued, PIPE_BYTES);
		size_t got = 0;
		while (got < PIPE_BYTES) {
			ssize_t r = read(RFD, buf + got, PIPE_BYTES - got);
			if (r <= 0) {
				wl_fail("child: read %zu of %d bytes, then %s", got, PIPE_BYTES,
					r ? strerror(errno) : "end of file");
				break;
			}
			got += (size_t)r;
		}
		if (wl_corrupt())
			buf[PIPE_BYTES / 2] ^= 1;
		if (got == PIPE_BYTES)
			wl_expect("child: pipe data", buf, PIPE_BYTES, 11);
		/* The parent's end is still open, so nothing more and no EOF. */
		fcntl(RFD, F_SETFL, O_NONBLOCK);
		ssize_t r = read(RFD, buf, 1);
		if (!(r < 0 && errno == EAGAIN))
			wl_fail("child: pipe holds more than %d bytes, or its writer is gone (read gave %zd)",
				PIPE_BYTES, r);
	}
	return wl_finish_as("verdict-child");
}

int main(int argc, char **argv)
{
	wl_init(argc, argv, 1);
	int p[2];
	if (pipe(p) != 0 || dup2(p[1], WFD) < 0 || dup2(p[0], RFD) < 0) {
		perror("pipe");
		return 2;
	}
	close(p[0]);
	close(p[1]);
	/* The child says when it has closed its copy of the write end, so the
	 * fd tables are as described before ready is written. */
	int sync[2];
	if (pipe(sync) != 0) {
		perror("pipe");
		return 2;
	}
	pid_t kid = fork();
	if (kid < 0) {
		perror("fork");
		return 2;
	}
	if (kid == 0) {
		close(WFD);
		close(sync[0]);
		if (write(sync[1], "x", 1) != 1)
			return 2;
		close(sync[1]);
		return child();
	}
	close(RFD);
	close(sync[1]);
	char c;
	if (read(sync[0], &c, 1) != 1) {
		perror("waiting for the child");
		return 2;
	}
	close(sync[0]);
	wl_fill(buf, PIPE_BYTES, 11);
	for (size_t done = 0; done < PIPE_BYTES;) {
		ssize_t w = write(WFD, buf + done, PIPE_BYTES - done);
		if (w <= 0) {
			perror("write to pipe");
			return 2;
		}
		done += (size_t)w;
	}
	wl_write("ready", "%d\n", (int)kid);

	wl_wait_term();

	check_fd(WFD, O_WRONLY, "parent");
	if (kill(kid, SIGTERM) != 0)
		wl_fail("parent: cannot signal child %d: %s", (int)kid, strerror(errno));
	int status = 0;
	if (waitpid(kid, &status, 0) != kid)
		wl_fail("parent: waitpid(%d): %s", (int)kid, strerror(errno));
	char child_verdict[600];
	if (wl_read("verdict-child", child_verdict, sizeof(child_verdict)) < 0)
		wl_fail("child wrote no verdict (wait status %#x)", status);
	else if (strcmp(child_verdict, "PASS") != 0)
		wl_fail("%s", child_verdict + (strncmp(child_verdict, "FAIL: ", 6) ? 0 : 6));
	else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		wl_fail("child passed but its wait status is %#x", status);
	/* With the only reader gone, writing must fail with EPIPE. */
	signal(SIGPIPE, SIG_IGN);
	if (!(write(WFD, "x", 1) < 0 && errno == EPIPE))
		wl_fail("parent: writing to the pipe with no reader did not fail with EPIPE");
	return wl_finish();
}
