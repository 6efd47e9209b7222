/* daemon DIR: a server that daemonizes itself, as nginx (`daemon on`) and
 * redis-server (`--daemonize yes`) do, and leaves the shapes of process
 * groups and sessions that daemons leave.
 *
 *   launcher         the sandbox's first process: forks b and exits 0
 *   b                setsid(), forks d, e and f, exits: session b and
 *                    group b live on without their leader
 *   +- d             the server (double fork: its parent b and grandparent
 *   |                launcher gone): init's child in session b, group b;
 *   |                counts in memory and writes DIR/count
 *   |  +- w1         forks w2, then setsid(): leads session w1; then forks
 *   |     |          x, which forks y and exits
 *   |     +- w2      in its grandparent d's session b, group b
 *   +- y (init's)    init's child in session w1 and group w1, whose leader
 *                    w1 lives elsewhere in the tree
 *   +- e             init's child in session b, leads group e
 *   +- f             init's child in session b, in group e: a group led by
 *                    a live sibling
 *
 * Each process but the launcher writes DIR/ids-<role> ("pid ppid pgid sid")
 * once in place (d, e and f once init is their parent), and d writes
 * DIR/ready once all are. SIGTERM (which reaches d, e, f and y, the roots left)
 * makes each check that its ids are what they were (DIR/ids-after-<role>);
 * d also checks its counter against a shadow copy, passes SIGTERM on to w1
 * (which passes it on to w2 and waits for y's verdict), reaps it, waits for
 * the verdicts of e and f and folds them all into DIR/verdict. */
#include "wl.h"

#include <sys/wait.h>

struct ids {
	int pid, ppid, pgid, sid;
};

static struct ids mine;
static const char *role = "launcher";
static int sync_r = -1, sync_w = -1;

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

/* Waits (bounded) until init is our parent: the process that forked us has
 * exited and the kernel reparented us. */
static void wait_for_init(void)
{
	for (int i = 0; getppid() != 1; i++) {
		if (i == 20000) {
			dprintf(2, "%s: parent still %d after 20 s\n", role, (int)getppid());
			_exit(2);
		}
		wl_sleep_ms(1);
	}
}

static pid_t fork_role(const char *kid_role, int (*body)(void), int keep_sync_r)
{
	pid_t pid = fork();
	if (pid < 0) {
		perror("fork");
		_exit(2);
	}
	if (pid == 0) {
		role = kid_role;
		if (!keep_sync_r) {
			close(sync_r);
			sync_r = -1;
		}
		_exit(body());
	}
	return pid;
}

static pid_t spawn(const char *kid_role, int (*body)(void))
{
	return fork_role(kid_role, body, 0);
}

/* d reads the sync pipe: it keeps its read end. */
static pid_t spawn_keep_sync(const char *kid_role, int (*body)(void))
{
	return fork_role(kid_role, body, 1);
}

/* Passes SIGTERM on to `kid`, reaps it and folds its verdict into ours. */
static void collect(pid_t kid, const char *kid_role)
{
	if (kill(kid, SIGTERM) != 0)
		wl_fail("%s: cannot signal %s (pid %d): %s", role, kid_role, (int)kid, strerror(errno));
	int status = 0;
	if (waitpid(kid, &status, 0) != kid)
		wl_fail("%s: waitpid(%s, pid %d): %s", role, kid_role, (int)kid, strerror(errno));
	else if (!WIFEXITED(status))
		wl_fail("%s (pid %d) ended with wait status %#x", kid_role, (int)kid, status);
}

/* Folds DIR/verdict-<kid_role> into ours, waiting (bounded) for it. */
static void fold(const char *kid_role)
{
	char file[64], verdict[600];
	snprintf(file, sizeof(file), "verdict-%s", kid_role);
	int i = 0;
	while (wl_read(file, verdict, sizeof(verdict)) < 0) {
		if (++i == 20000) {
			wl_fail("%s wrote no verdict in 20 s", kid_role);
			return;
		}
		wl_sleep_ms(1);
	}
	if (strncmp(verdict, "PASS", 4) != 0)
		wl_fail("%s", verdict + (strncmp(verdict, "FAIL: ", 6) ? 0 : 6));
}

static void in_place(void)
{
	close(sync_w);
	sync_w = -1;
}

static int run_w2(void)
{
	record();
	in_place();
	wl_wait_term();
	check_ids();
	return wl_finish_as("verdict-w2");
}

static int run_y(void)
{
	wait_for_init();
	record();
	in_place();
	wl_wait_term();
	check_ids();
	return wl_finish_as("verdict-y");
}

static int run_x(void)
{
	spawn("y", run_y);
	return 0;
}

static int run_w1(void)
{
	pid_t w2 = spawn("w2", run_w2);
	/* w2 stays in the session w1 was forked into (d's, b's). */
	if (setsid() < 0) {
		perror("setsid");
		return 2;
	}
	pid_t x = spawn("x", run_x);
	int status;
	if (waitpid(x, &status, 0) != x)
		return 2;
	record();
	in_place();
	wl_wait_term();
	check_ids();
	collect(w2, "w2");
	fold("w2");
	fold("y");
	return wl_finish_as("verdict-w1");
}

static pid_t e_pid;

static int run_e(void)
{
	wait_for_init();
	record();
	in_place();
	wl_wait_term();
	check_ids();
	return wl_finish_as("verdict-e");
}

static int run_f(void)
{
	if (setpgid(0, e_pid) != 0) {
		perror("setpgid(0, e)");
		return 2;
	}
	wait_for_init();
	record();
	in_place();
	wl_wait_term();
	check_ids();
	return wl_finish_as("verdict-f");
}

static int run_d(void)
{
	pid_t w1 = spawn("w1", run_w1);
	wait_for_init();
	record();
	in_place();
	char c;
	while (read(sync_r, &c, 1) > 0) /* end of file: every process is in place */
		;
	close(sync_r);

	/* The server's state: a counter in memory, and its shadow copy. */
	volatile unsigned long count = 0, shadow = 0;
	wl_write("ready", "%d\n", (int)getpid());
	while (!wl_term) {
		count++;
		shadow = count * 3;
		if (count % 32 == 0)
			wl_write("count", "%lu\n", count);
		wl_sleep_ms(1);
	}
	if (wl_corrupt())
		shadow ^= 1;
	if (shadow != count * 3)
		wl_fail("d: counter %lu, shadow %lu", count, shadow);
	check_ids();
	collect(w1, "w1");
	fold("w1");
	fold("e");
	fold("f");
	wl_pass_note("count=%lu", count);
	dprintf(1, "d: stopping at %lu\n", count);
	return wl_finish();
}

static int run_b(void)
{
	if (setsid() < 0) {
		perror("setsid");
		return 2;
	}
	record();
	spawn_keep_sync("d", run_d);
	/* e makes its group before f joins it. */
	int go[2];
	if (pipe(go) != 0)
		return 2;
	pid_t e = fork();
	if (e < 0)
		return 2;
	if (e == 0) {
		role = "e";
		close(sync_r);
		sync_r = -1;
		close(go[0]);
		int r = setpgid(0, 0);
		close(go[1]);
		_exit(r == 0 ? run_e() : 2);
	}
	close(go[1]);
	char c;
	while (read(go[0], &c, 1) > 0) /* e leads its group now */
		;
	close(go[0]);
	e_pid = e;
	spawn("f", run_f);
	return 0;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv, 1);
	int sync[2];
	if (pipe2(sync, O_CLOEXEC) != 0)
		return 2;
	sync_r = sync[0];
	sync_w = sync[1];
	/* Daemonize: the first process forks and exits at once. */
	pid_t b = fork();
	if (b < 0)
		return 2;
	if (b == 0) {
		role = "b";
		_exit(run_b());
	}
	dprintf(1, "launcher: server starting, pid %d\n", (int)b);
	return 0;
}
