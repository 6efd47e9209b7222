/* seccomp DIR: seccomp filters and strict mode, in force while dumped.
 *
 * Threads t1 and t2 start; the main thread sets no_new_privs and installs
 * filter A with SECCOMP_FILTER_FLAG_TSYNC (and FLAG_LOG): prctl() and
 * sigaltstack() fail with EPERM in every thread (stasis injects both into
 * every thread it dumps, so the dump works only if its syscalls are not
 * filtered). t2 then installs filter B of its own: getpriority() fails with
 * EACCES. A child process enters strict mode and echoes bytes from a
 * pipe, +1 (a thread could not: strict mode and filters exclude each other
 * within a process that uses TSYNC).
 *
 * After SIGTERM each filtered thread checks which syscalls fail and how,
 * and its Seccomp, NoNewPrivs and Seccomp_filters lines in
 * /proc/thread-self/status (main and t1: 1 filter, t2: 2); the child must
 * echo and be in mode 1. Then t2 exits and the main thread installs filter C (uname()
 * fails with EPERM) with TSYNC: that works only if t1 shares the main
 * thread's filters as it did before the dump; t1 must then see C. */
#include "wl.h"

#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/utsname.h>

static volatile int phase;
static char t_fail[3][256];
static int echo_in[2], echo_out[2];
#include <sys/wait.h>

static int install(int nr1, int err1, int nr2, int err2, unsigned flags)
{
	struct sock_filter f[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)nr1, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (unsigned)err1),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)nr2, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (unsigned)err2),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = { sizeof(f) / sizeof(f[0]), f };
	return (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &prog);
}

/* The value of a line of /proc/thread-self/status, or -1. */
static long status_field(const char *name)
{
	char buf[4096];
	int fd = open("/proc/thread-self/status", O_RDONLY | O_CLOEXEC);
	ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof(buf) - 1);
	if (fd >= 0)
		close(fd);
	if (n <= 0)
		return -1;
	buf[n] = 0;
	size_t len = strlen(name);
	for (char *l = buf; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL)
		if (!strncmp(l, name, len) && l[len] == ':')
			return strtol(l + len + 1, NULL, 10);
	return -1;
}

#define TFAIL(i, ...)                                                       \
	do {                                                                \
		if (!t_fail[i][0])                                          \
			snprintf(t_fail[i], sizeof(t_fail[i]), __VA_ARGS__); \
	} while (0)

/* Checks the calling thread: `slot` for its failures, `filters` expected. */
static void check_self(int slot, const char *who, int filters, int own_filter)
{
	errno = 0;
	if (prctl(PR_GET_DUMPABLE) != -1 || errno != EPERM)
		TFAIL(slot, "%s: prctl is not refused with EPERM (errno %d)", who, errno);
	stack_t ss;
	errno = 0;
	if (sigaltstack(NULL, &ss) != -1 || errno != EPERM)
		TFAIL(slot, "%s: sigaltstack is not refused with EPERM (errno %d)", who, errno);
	errno = 0;
	int r = getpriority(PRIO_PROCESS, 0);
	if (own_filter && (r != -1 || errno != EACCES))
		TFAIL(slot, "%s: getpriority is not refused with EACCES (errno %d)", who, errno);
	if (!own_filter && r == -1 && errno != 0)
		TFAIL(slot, "%s: getpriority fails: %s", who, strerror(errno));
	long mode = status_field("Seccomp"), nnp = status_field("NoNewPrivs"), nf = status_field("Seccomp_filters");
	if (mode != 2 || nnp != 1 || nf != filters)
		TFAIL(slot, "%s: Seccomp %ld, NoNewPrivs %ld, Seccomp_filters %ld; expected 2, 1, %d", who, mode, nnp,
		      nf, filters);
}

static void wait_phase(int p)
{
	while (__atomic_load_n(&phase, __ATOMIC_ACQUIRE) < p)
		wl_sleep_ms(1);
}

static void *t1_main(void *arg)
{
	(void)arg;
	wait_phase(1);
	check_self(0, "t1", 1, 0);
	__atomic_store_n(&phase, 2, __ATOMIC_RELEASE);
	wait_phase(3);
	struct utsname u;
	errno = 0;
	if (uname(&u) != -1 || errno != EPERM)
		TFAIL(0, "t1: filter C (installed with TSYNC after the restore) does not apply to it");
	__atomic_store_n(&phase, 4, __ATOMIC_RELEASE);
	for (;;)
		pause();
	return NULL;
}

static volatile int t2_installed;

static void *t2_main(void *arg)
{
	(void)arg;
	while (!__atomic_load_n(&t2_installed, __ATOMIC_ACQUIRE)) {
		/* Wait for filter A, then install B. */
		if (status_field("Seccomp") == 2) {
			if (install(__NR_getpriority, EACCES, __NR_getpriority, EACCES, 0) != 0) {
				TFAIL(1, "t2: installing filter B: %s", strerror(errno));
			}
			__atomic_store_n(&t2_installed, 1, __ATOMIC_RELEASE);
		}
		wl_sleep_ms(1);
	}
	wait_phase(1);
	check_self(1, "t2", 2, 1);
	return NULL;
}

/* Strict mode: only read, write, exit and sigreturn. Ends at end of file. */
static void strict_child(void)
{
	close(echo_in[1]);
	close(echo_out[0]);
	if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT) != 0)
		_exit(3);
	unsigned char c;
	while (syscall(SYS_read, echo_in[0], &c, 1) == 1) {
		c++;
		syscall(SYS_write, echo_out[1], &c, 1);
	}
	syscall(SYS_exit, 0);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv, 1);
	if (pipe(echo_in) || pipe(echo_out))
		return 2;
	pid_t kid = fork();
	if (kid < 0)
		return 2;
	if (kid == 0)
		strict_child();
	close(echo_in[0]);
	close(echo_out[1]);
	/* The child is in strict mode once it echoes. */
	unsigned char c = 1;
	if (write(echo_in[1], &c, 1) != 1 || read(echo_out[0], &c, 1) != 1 || c != 2)
		return 2;
	pthread_t t1, t2;
	if (pthread_create(&t1, NULL, t1_main, NULL) || pthread_create(&t2, NULL, t2_main, NULL))
		return 2;
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
		return 2;
	/* The main thread's sigaltstack and prctl are filtered from here on. */
	if (install(__NR_prctl, EPERM, __NR_sigaltstack, EPERM, SECCOMP_FILTER_FLAG_TSYNC | SECCOMP_FILTER_FLAG_LOG) !=
	    0) {
		dprintf(2, "installing filter A: %s\n", strerror(errno));
		return 2;
	}
	while (!__atomic_load_n(&t2_installed, __ATOMIC_ACQUIRE))
		wl_sleep_ms(1);
	wl_write("ready", "%d\n", (int)kid);

	wl_wait_term();

	__atomic_store_n(&phase, 1, __ATOMIC_RELEASE);
	check_self(2, "main", wl_corrupt() ? 2 : 1, 0);
	pthread_join(t2, NULL);
	wait_phase(2);
	c = 41;
	if (write(echo_in[1], &c, 1) != 1 || read(echo_out[0], &c, 1) != 1 || c != 42)
		wl_fail("the child (strict mode) does not echo: got %d", c);
	char path[64], buf[4096];
	snprintf(path, sizeof(path), "/proc/%d/status", (int)kid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof(buf) - 1);
	if (fd >= 0)
		close(fd);
	buf[n > 0 ? n : 0] = 0;
	char *m = strstr(buf, "\nSeccomp:");
	if (!m || strtol(m + 9, NULL, 10) != 1)
		wl_fail("the child is not in strict mode any more");
	int rc = install(__NR_uname, EPERM, __NR_uname, EPERM, SECCOMP_FILTER_FLAG_TSYNC);
	if (rc != 0)
		wl_fail("installing filter C with TSYNC: %d (%s): the threads no longer share their filters", rc,
			rc < 0 ? strerror(errno) : "a thread's tid");
	else {
		__atomic_store_n(&phase, 3, __ATOMIC_RELEASE);
		wait_phase(4);
	}
	for (int i = 0; i < 3; i++)
		if (t_fail[i][0])
			wl_fail("%s", t_fail[i]);
	close(echo_in[1]);
	int status = 0;
	if (waitpid(kid, &status, 0) != kid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
		wl_fail("the strict-mode child ended with wait status %#x", status);
	return wl_finish();
}
