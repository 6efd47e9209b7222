/* A memfd holding a script, executed with execveat(fd, "", AT_EMPTY_PATH)
 * before the dump and after the restore; a read-only description of it
 * (opened through /proc/self/fd) maps it privately, its own fd shared.
 * A second memfd is also open for writing through /proc/self/fd, so it has
 * a writer and cannot be executed (ETXTBSY), before and after.
 *
 * usage: memfdexec DIR */
#include "wl.h"

#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>

static const char script[] = "#!/bin/sh\nexit 7\n";

/* The exit status of the memfd executed by a child, or -errno when the
 * execveat failed. */
static int run_fd(int fd)
{
	int pipefd[2];
	if (pipe2(pipefd, O_CLOEXEC) != 0)
		return -1000;
	pid_t pid = fork();
	if (pid < 0)
		return -1000;
	if (pid == 0) {
		char *const argv[] = { "memfd-script", NULL };
		char *const envp[] = { NULL };
		syscall(SYS_execveat, fd, "", argv, envp, AT_EMPTY_PATH);
		int e = errno;
		if (write(pipefd[1], &e, sizeof(e)) != sizeof(e))
			_exit(120);
		_exit(121);
	}
	close(pipefd[1]);
	int e = 0, status = 0;
	ssize_t n = read(pipefd[0], &e, sizeof(e));
	close(pipefd[0]);
	if (waitpid(pid, &status, 0) != pid)
		return -1001;
	if (n == (ssize_t)sizeof(e))
		return -e;
	return WIFEXITED(status) ? WEXITSTATUS(status) : -1002;
}

static int make(const char *name)
{
	int fd = memfd_create(name, 0);
	if (fd < 0 || write(fd, script, sizeof(script) - 1) != (ssize_t)(sizeof(script) - 1)) {
		dprintf(2, "memfd %s: %s\n", name, strerror(errno));
		exit(2);
	}
	return fd;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv, 1);
	int fd = make("runnable");
	char path[64];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	int rofd = open(path, O_RDONLY | O_CLOEXEC);
	if (rofd < 0) {
		dprintf(2, "reopening the memfd read-only: %s\n", strerror(errno));
		return 2;
	}
	char *priv = mmap(NULL, WL_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, rofd, 0);
	char *shared = mmap(NULL, WL_PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (priv == MAP_FAILED || shared == MAP_FAILED) {
		dprintf(2, "mapping the memfd: %s\n", strerror(errno));
		return 2;
	}
	int busy = make("busy");
	snprintf(path, sizeof(path), "/proc/self/fd/%d", busy);
	int writer = open(path, O_RDWR | O_CLOEXEC);
	if (writer < 0) {
		dprintf(2, "reopening the memfd for writing: %s\n", strerror(errno));
		return 2;
	}
	int before = run_fd(fd), busy_before = run_fd(busy);
	if (before != 7 || busy_before != -ETXTBSY) {
		dprintf(2, "before the dump: executing the memfd gave %d, the written one %d\n", before,
			busy_before);
		return 2;
	}
	wl_write("ready", "ready\n");
	wl_wait_term();

	if (wl_corrupt()) {
		/* A writer: the memfd can no longer be executed. */
		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
		if (open(path, O_RDWR | O_CLOEXEC) < 0)
			wl_fail("corrupt: reopening: %s", strerror(errno));
	}
	int after = run_fd(fd);
	if (after != 7)
		wl_fail("executing the memfd after restore gave %d (%s), expected exit status 7", after,
			after < 0 ? strerror(-after) : "status");
	int busy_after = run_fd(busy);
	if (busy_after != -ETXTBSY)
		wl_fail("executing the memfd open for writing gave %d, expected ETXTBSY", busy_after);
	if (memcmp(priv, script, sizeof(script) - 1) != 0 || memcmp(shared, script, sizeof(script) - 1) != 0)
		wl_fail("the memfd's mappings lost its contents");
	return wl_finish();
}
