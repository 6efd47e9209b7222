/* Parent of a workload dumped by CRIU, so that the PIDs of its whole tree are
 * free again, deterministically, once the dump has killed it.
 *
 *   reaper PIDFILE COMMAND [ARGS...]
 *
 * Becomes a child subreaper, starts COMMAND in a session of its own, writes its
 * PID to PIDFILE (temporary name, then rename), then reaps every process of the
 * tree (orphans come back to it) and exits when none is left. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: %s PIDFILE COMMAND [ARGS...]\n", argv[0]);
		return 2;
	}
	if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0) {
		perror("PR_SET_CHILD_SUBREAPER");
		return 1;
	}
	pid_t pid = fork();
	if (pid < 0) {
		perror("fork");
		return 1;
	}
	if (pid == 0) {
		setsid();
		execv(argv[2], argv + 2);
		perror(argv[2]);
		_exit(127);
	}
	char tmp[4096];
	snprintf(tmp, sizeof tmp, "%s.tmp", argv[1]);
	FILE *f = fopen(tmp, "w");
	if (!f || fprintf(f, "%d\n", pid) < 0 || fclose(f) != 0 || rename(tmp, argv[1]) != 0) {
		perror(argv[1]);
		return 1;
	}
	for (;;) {
		if (wait(NULL) < 0) {
			if (errno == EINTR)
				continue;
			if (errno == ECHILD)
				return 0;
			perror("wait");
			return 1;
		}
	}
}
