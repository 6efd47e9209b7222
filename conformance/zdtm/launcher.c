/*
 * Launcher for ZDTM tests inside a stasis sandbox.
 *
 * A ZDTM test daemonizes: its first process forks the real test, writes the
 * pidfile and exits. A sandbox whose main process exits ends, so the runner
 * starts each test under this launcher instead: it marks itself a child
 * subreaper, runs the test's command line, and stays (as the sandbox's main
 * process) until every descendant reparented to it has exited. Its exit status
 * is the test's first process's.
 *
 * Built by run.py with the system C compiler; no dependencies.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	pid_t first;
	int status, first_status = 0;

	if (argc < 2) {
		fprintf(stderr, "usage: %s CMD [ARG]...\n", argv[0]);
		return 2;
	}
	if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) {
		perror("prctl(PR_SET_CHILD_SUBREAPER)");
		return 127;
	}
	first = fork();
	if (first < 0) {
		perror("fork");
		return 127;
	}
	if (first == 0) {
		execvp(argv[1], argv + 1);
		fprintf(stderr, "exec %s: %m\n", argv[1]);
		_exit(127);
	}
	for (;;) {
		pid_t p = wait(&status);

		if (p < 0) {
			if (errno == EINTR)
				continue;
			break; /* ECHILD: nothing left */
		}
		if (p == first)
			first_status = status;
	}
	if (WIFSIGNALED(first_status))
		return 128 + WTERMSIG(first_status);
	return WEXITSTATUS(first_status);
}
