/* stopped DIR: a process stopped by job control stays stopped.
 *
 * The workload forks two children that count in a shared page. The first is
 * stopped with SIGSTOP, the second with SIGTSTP (the parent waits for each
 * stop with WUNTRACED), then the parent writes ready. On SIGTERM the parent
 * checks that each child is still stopped (state T in /proc/PID/stat) and
 * that its counter did not move while the parent ran a long busy loop; then
 * it sends SIGCONT, waits for WCONTINUED, and checks that each counter moves
 * again. With STASIS_TEST_CORRUPT=1 the parent sends the first child
 * SIGCONT before its checks. */
#include "wl.h"

#include <sched.h>
#include <sys/mman.h>
#include <sys/wait.h>

static volatile uint64_t *counters;

static char state_of(pid_t pid)
{
	char path[64], buf[512];
	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return '?';
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return '?';
	buf[n] = 0;
	char *p = strrchr(buf, ')');
	return p && p[1] == ' ' ? p[2] : '?';
}

static void busy_ms(long ms)
{
	struct timespec a, b;
	clock_gettime(CLOCK_MONOTONIC, &a);
	do
		clock_gettime(CLOCK_MONOTONIC, &b);
	while ((b.tv_sec - a.tv_sec) * 1000 + (b.tv_nsec - a.tv_nsec) / 1000000 < ms);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv, 1);
	counters = mmap(NULL, WL_PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (counters == MAP_FAILED) {
		perror("mmap");
		return 2;
	}
	static const int sigs[2] = { SIGSTOP, SIGTSTP };
	pid_t kids[2];
	for (int i = 0; i < 2; i++) {
		kids[i] = fork();
		if (kids[i] < 0) {
			perror("fork");
			return 2;
		}
		if (kids[i] == 0) {
			/* A group of its own, whose parent is outside it: not an
			 * orphaned group, so SIGTSTP stops it (the kernel drops job
			 * control stops sent to orphaned groups). */
			setpgid(0, 0);
			signal(SIGTERM, SIG_DFL);
			for (;;)
				counters[i]++;
		}
		setpgid(kids[i], kids[i]);
		while (counters[i] == 0)
			sched_yield();
		kill(kids[i], sigs[i]);
		int st;
		if (waitpid(kids[i], &st, WUNTRACED) != kids[i] || !WIFSTOPPED(st) || WSTOPSIG(st) != sigs[i]) {
			dprintf(2, "child %d did not stop\n", i);
			return 2;
		}
	}
	wl_write("ready", "%d %d\n", kids[0], kids[1]);
	wl_wait_term();
	if (wl_corrupt())
		kill(kids[0], SIGCONT);
	uint64_t before[2] = { counters[0], counters[1] };
	busy_ms(50);
	for (int i = 0; i < 2; i++) {
		char s = state_of(kids[i]);
		if (s != 'T')
			wl_fail("child %d (stopped by signal %d) is in state %c, not stopped", i, sigs[i], s);
		if (counters[i] != before[i])
			wl_fail("child %d counted from %llu to %llu while stopped", i, (unsigned long long)before[i],
				(unsigned long long)counters[i]);
	}
	for (int i = 0; i < 2; i++) {
		kill(kids[i], SIGCONT);
		int st;
		uint64_t c = counters[i];
		for (int k = 0; k < 2000 && counters[i] == c; k++)
			wl_sleep_ms(1);
		if (counters[i] == c)
			wl_fail("child %d does not count after SIGCONT", i);
		kill(kids[i], SIGKILL);
		waitpid(kids[i], &st, 0);
	}
	return wl_finish();
}
