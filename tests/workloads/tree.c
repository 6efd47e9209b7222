/* tree DIR: a three-level process tree with a zombie, a session and a group.
 *
 *   root
 *   +- a      session leader (setsid)
 *   |  +- a1  (third level, in a's session and group)
 *   |  +- z   exited with status 7, never reaped before SIGTERM: a zombie
 *   +- b      leader of its own process group, in root's session
 *
 * Each process writes DIR/ids-<role> ("pid ppid pgid sid") before ready.
 * SIGTERM goes to root, which forwards it to a and b; a forwards it to a1.
 * Each checks that getpid, getppid, getpgid and getsid give what they gave
 * before (and writes DIR/ids-after-<role>); a checks that z is still a zombie
 * and reaps it with status 7. Parents reap their children and fold the
 * children's verdicts (DIR/verdict-<role>) into their own. */
#include "wl.h"

#include <sys/wait.h>

struct ids {
	int pid, ppid, pgid, sid;
};

static struct ids mine;
static const char *role = "root";

static void record(void)
{
	mine.pid = getpid();
	mine.ppid = getppid();
	mine.pgid = getpgid(0);
	mine.sid = getsid(0);
	char name[64];
	snprintf(name, sizeof(name), "ids-%s", role);
	wl_write(name, "%d %d %d %d\n", mine.pid, mine.ppid, mine.pgid, mine.sid);
}

static void check_ids(void)
{
	struct ids now = { getpid(), getppid(), getpgid(0), getsid(0) };
	char name[64];
	snprintf(name, sizeof(name), "ids-after-%s", role);
	wl_write(name, "%d %d %d %d\n", now.pid, now.ppid, now.pgid, now.sid);
	if (now.pid != mine.pid)
		wl_fail("%s: getpid() is %d, was %d", role, now.pid, mine.pid);
	if (now.ppid != mine.ppid)
		wl_fail("%s: getppid() is %d, was %d", role, now.ppid, mine.ppid);
	if (now.pgid != mine.pgid)
		wl_fail("%s: getpgid() is %d, was %d", role, now.pgid, mine.pgid);
	if (now.sid != mine.sid)
		wl_fail("%s: getsid() is %d, was %d", role, now.sid, mine.sid);
}

/* Forwards SIGTERM to `kid`, reaps it and folds its verdict into ours. */
static void collect(pid_t kid, const char *kid_role)
{
	if (kill(kid, SIGTERM) != 0)
		wl_fail("%s: cannot signal %s (pid %d): %s", role, kid_role, (int)kid, strerror(errno));
	int status = 0;
	if (waitpid(kid, &status, 0) != kid) {
		wl_fail("%s: waitpid(%s, pid %d): %s", role, kid_role, (int)kid, strerror(errno));
		return;
	}
	char file[64], verdict[600];
	snprintf(file, sizeof(file), "verdict-%s", kid_role);
	if (wl_read(file, verdict, sizeof(verdict)) < 0)
		wl_fail("%s (pid %d) wrote no verdict; wait status %#x", kid_role, (int)kid, status);
	else if (strcmp(verdict, "PASS") != 0)
		wl_fail("%s", verdict + (strncmp(verdict, "FAIL: ", 6) ? 0 : 6));
	else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		wl_fail("%s passed but exited with wait status %#x", kid_role, status);
}

static char proc_state(pid_t pid)
{
	char path[64], buf[512];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return '?';
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	buf[n > 0 ? n : 0] = 0;
	char *paren = strrchr(buf, ')');
	return paren && paren[1] && paren[2] ? paren[2] : '?';
}

static int sync_r = -1, sync_w = -1;

static void ready_and_wait(void)
{
	close(sync_w);
	wl_wait_term();
	check_ids();
}

static pid_t spawn(const char *kid_role, int (*body)(void))
{
	pid_t pid = fork();
	if (pid < 0) {
		perror("fork");
		exit(2);
	}
	if (pid == 0) {
		role = kid_role;
		if (sync_r >= 0)
			close(sync_r);
		sync_r = -1;
		exit(body());
	}
	return pid;
}

static int run_a1(void)
{
	record();
	ready_and_wait();
	return wl_finish_as("verdict-a1");
}

static int run_z(void)
{
	_exit(7);
}

static int run_a(void)
{
	if (setsid() < 0) {
		perror("setsid");
		return 2;
	}
	record();
	pid_t a1 = spawn("a1", run_a1);
	pid_t z = spawn("z", run_z);
	siginfo_t si;
	memset(&si, 0, sizeof(si));
	if (waitid(P_PID, (id_t)z, &si, WEXITED | WNOWAIT) != 0) { /* z is a zombie now, not reaped */
		perror("waitid");
		return 2;
	}
	wl_write("zombie", "%d\n", (int)z);
	ready_and_wait();
	collect(a1, "a1");
	char st = proc_state(z);
	if (st != 'Z')
		wl_fail("a: child %d should be a zombie, its state is %c", (int)z, st);
	int status = 0;
	pid_t got = waitpid(z, &status, WNOHANG);
	if (got != z)
		wl_fail("a: waitpid(zombie %d, WNOHANG) gave %d (%s)", (int)z, (int)got,
			got < 0 ? strerror(errno) : "not waitable");
	else if (!WIFEXITED(status) || WEXITSTATUS(status) != 7)
		wl_fail("a: zombie %d has wait status %#x, expected exit status 7", (int)z, status);
	return wl_finish_as("verdict-a");
}

static int run_b(void)
{
	if (setpgid(0, 0) != 0) {
		perror("setpgid");
		return 2;
	}
	record();
	ready_and_wait();
	return wl_finish_as("verdict-b");
}

int main(int argc, char **argv)
{
	wl_init(argc, argv, 1);
	int sync[2];
	if (pipe(sync) != 0)
		return 2;
	sync_r = sync[0];
	sync_w = sync[1];
	record();
	pid_t a = spawn("a", run_a);
	pid_t b = spawn("b", run_b);
	close(sync_w);
	char c;
	while (read(sync[0], &c, 1) > 0) /* end of file: every process is in place */
		;
	close(sync[0]);
	wl_write("ready", "%d %d\n", (int)a, (int)b);

	wl_wait_term();

	if (wl_corrupt())
		mine.pgid ^= 1;
	check_ids();
	collect(a, "a");
	collect(b, "b");
	return wl_finish();
}
