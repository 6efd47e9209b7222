/* creds EXPECT DIR: credentials and capabilities, as the sandbox gave them and
 * as a restore gives them back.
 *
 * EXPECT is "-" or a comma-separated list of key=value: uid, gid (all four
 * ids), groups (colon-separated), inh, prm, eff, bnd, amb (hex capability
 * masks), nnp (0 or 1). At start the workload reads Uid, Gid, Groups, CapInh,
 * CapPrm, CapEff, CapBnd, CapAmb and NoNewPrivs from /proc/self/status and
 * records a failure for every value that differs from EXPECT: the sandbox
 * gave it exactly what the profile says, no more. They are written to
 * DIR/creds-start.
 *
 * Then it makes three tasks with different credentials, each of which takes a
 * snapshot of its own (those lines of /proc/thread-self/status, plus
 * PR_GET_SECUREBITS, plus PR_GET_KEEPCAPS):
 * - the main thread keeps what the sandbox gave;
 * - a second thread lowers its own effective set (capset affects only the
 *   calling thread) by the lowest capability in it;
 * - a child process, with whatever privilege it has: sets NoNewPrivs, drops
 *   one capability from its bounding set (CAP_SETPCAP), changes its groups
 *   and gids (CAP_SETGID) and its uids, keeping its capabilities
 *   (CAP_SETUID), sets SECBIT_NOROOT and SECBIT_NOROOT_LOCKED (CAP_SETPCAP),
 *   lowers its effective set by its highest capability, and sets
 *   PR_SET_KEEPCAPS (no privilege needed).
 * On SIGTERM each compares its credentials with its snapshot: after a restore
 * each task must have exactly what it had, never more and never less. The
 * child writes DIR/verdict-child; the parent includes it in DIR/verdict.
 * With STASIS_TEST_CORRUPT=1 the main thread lowers its own effective set
 * before its check. */
#include "wl.h"

#include <linux/capability.h>
#include <linux/securebits.h>
#include <pthread.h>
#include <grp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>

static const char *keys[] = { "Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs" };
#define NKEYS (sizeof(keys) / sizeof(keys[0]))

struct snap {
	char v[NKEYS][160];
	int securebits, keepcaps;
};

static void take(struct snap *s)
{
	static __thread char buf[8192];
	memset(s, 0, sizeof(*s));
	int fd = open("/proc/thread-self/status", O_RDONLY | O_CLOEXEC);
	ssize_t n = fd >= 0 ? read(fd, buf, sizeof(buf) - 1) : -1;
	if (fd >= 0)
		close(fd);
	if (n < 0)
		n = 0;
	buf[n] = 0;
	for (char *line = buf; line && *line;) {
		char *next = strchr(line, '\n');
		if (next)
			*next++ = 0;
		for (size_t k = 0; k < NKEYS; k++) {
			size_t l = strlen(keys[k]);
			if (!strncmp(line, keys[k], l) && line[l] == ':') {
				char *v = line + l + 1;
				while (*v == '\t' || *v == ' ')
					v++;
				snprintf(s->v[k], sizeof(s->v[k]), "%s", v);
				/* Trailing blanks (Groups has one). */
				size_t e = strlen(s->v[k]);
				while (e && (s->v[k][e - 1] == ' ' || s->v[k][e - 1] == '\t'))
					s->v[k][--e] = 0;
			}
		}
		line = next;
	}
	s->securebits = prctl(PR_GET_SECUREBITS, 0, 0, 0, 0);
	s->keepcaps = prctl(PR_GET_KEEPCAPS, 0, 0, 0, 0);
}

static void compare(const char *who, const struct snap *was, const struct snap *now)
{
	for (size_t k = 0; k < NKEYS; k++)
		if (strcmp(was->v[k], now->v[k]) != 0)
			wl_fail("%s: %s is \"%s\", it was \"%s\"", who, keys[k], now->v[k], was->v[k]);
	if (was->securebits != now->securebits)
		wl_fail("%s: securebits are %#x, they were %#x", who, now->securebits, was->securebits);
	if (was->keepcaps != now->keepcaps)
		wl_fail("%s: keepcaps is %d, it was %d", who, now->keepcaps, was->keepcaps);
}

static uint64_t hex(const char *s)
{
	return strtoull(s, NULL, 16);
}

/* capget/capset on the calling thread (glibc's wrappers would be libcap's). */
static int caps_get(uint64_t *eff, uint64_t *prm, uint64_t *inh)
{
	struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct d[2];
	if (syscall(SYS_capget, &h, d) != 0)
		return -1;
	*eff = d[0].effective | (uint64_t)d[1].effective << 32;
	*prm = d[0].permitted | (uint64_t)d[1].permitted << 32;
	*inh = d[0].inheritable | (uint64_t)d[1].inheritable << 32;
	return 0;
}

static int caps_set(uint64_t eff, uint64_t prm, uint64_t inh)
{
	struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct d[2] = {
		{ (uint32_t)eff, (uint32_t)prm, (uint32_t)inh },
		{ (uint32_t)(eff >> 32), (uint32_t)(prm >> 32), (uint32_t)(inh >> 32) },
	};
	return (int)syscall(SYS_capset, &h, d);
}

static int lowest(uint64_t m)
{
	return m ? __builtin_ctzll(m) : -1;
}

static int highest(uint64_t m)
{
	return m ? 63 - __builtin_clzll(m) : -1;
}

/* Drops capability `cap` from the calling thread's effective set. */
static void lower_effective(const char *who, int cap)
{
	uint64_t eff, prm, inh;
	if (cap < 0)
		return;
	if (caps_get(&eff, &prm, &inh) != 0 || caps_set(eff & ~(1ULL << cap), prm, inh) != 0)
		wl_fail("%s: capset without capability %d: %s", who, cap, strerror(errno));
}

/* Checks the sandbox's credentials against EXPECT. */
static void check_expect(char *spec, const struct snap *s)
{
	if (!strcmp(spec, "-"))
		return;
	for (char *kv = strtok(spec, ","); kv; kv = strtok(NULL, ",")) {
		char *eq = strchr(kv, '=');
		if (!eq) {
			wl_fail("bad expectation \"%s\"", kv);
			continue;
		}
		*eq = 0;
		const char *key = kv, *val = eq + 1;
		char want[160];
		int idx = -1, mask = 0;
		if (!strcmp(key, "uid") || !strcmp(key, "gid")) {
			idx = key[0] == 'u' ? 0 : 1;
			snprintf(want, sizeof(want), "%s\t%s\t%s\t%s", val, val, val, val);
		} else if (!strcmp(key, "groups")) {
			idx = 2;
			snprintf(want, sizeof(want), "%s", val);
			for (char *c = want; *c; c++)
				if (*c == ':')
					*c = ' ';
		} else if (!strcmp(key, "nnp")) {
			idx = 8;
			snprintf(want, sizeof(want), "%s", val);
		} else {
			const char *caps[] = { "inh", "prm", "eff", "bnd", "amb" };
			for (int c = 0; c < 5; c++)
				if (!strcmp(key, caps[c]))
					idx = 3 + c;
			mask = 1;
		}
		if (idx < 0) {
			wl_fail("unknown expectation %s", key);
			continue;
		}
		int same = mask ? hex(s->v[idx]) == hex(val) : !strcmp(s->v[idx], want);
		if (!same)
			wl_fail("the sandbox gave %s \"%s\", the profile says \"%s\"", keys[idx], s->v[idx],
				mask ? val : want);
	}
}

static struct snap main_snap, thread_snap, child_snap;
static int ready_pipe[2];
static volatile int thread_stop;

static void *second_thread(void *arg)
{
	(void)arg;
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	uint64_t eff, prm, inh;
	if (caps_get(&eff, &prm, &inh) == 0)
		lower_effective("thread", lowest(eff));
	take(&thread_snap);
	char c = 't';
	if (write(ready_pipe[1], &c, 1) != 1)
		wl_fail("thread: ready pipe: %s", strerror(errno));
	while (!thread_stop)
		wl_sleep_ms(1);
	struct snap now;
	take(&now);
	compare("thread", &thread_snap, &now);
	return NULL;
}

static int child(void)
{
	uint64_t eff, prm, inh;
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
		wl_fail("child: PR_SET_NO_NEW_PRIVS: %s", strerror(errno));
	if (caps_get(&eff, &prm, &inh) != 0)
		wl_fail("child: capget: %s", strerror(errno));
	uint64_t bnd = hex(main_snap.v[6]);
	if ((eff >> CAP_SETPCAP & 1) && bnd) {
		int drop = highest(bnd);
		if (prctl(PR_CAPBSET_DROP, drop, 0, 0, 0) != 0)
			wl_fail("child: drop %d from the bounding set: %s", drop, strerror(errno));
	}
	if (eff >> CAP_SETGID & 1) {
		gid_t groups[2] = { 4242, 4243 };
		if (setgroups(2, groups) != 0 || setresgid(4301, 4302, 4303) != 0)
			wl_fail("child: setgroups/setresgid: %s", strerror(errno));
	}
	if (eff >> CAP_SETUID & 1) {
		if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0 || setresuid(4401, 4402, 4403) != 0 ||
		    caps_set(eff, prm, inh) != 0 || prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0) != 0)
			wl_fail("child: setresuid keeping capabilities: %s", strerror(errno));
	}
	if (eff >> CAP_SETPCAP & 1) {
		if (prctl(PR_SET_SECUREBITS, SECBIT_NOROOT | SECBIT_NOROOT_LOCKED, 0, 0, 0) != 0)
			wl_fail("child: PR_SET_SECUREBITS: %s", strerror(errno));
	}
	lower_effective("child", highest(eff));
	/* Needs no privilege: every child differs at least here. */
	if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0)
		wl_fail("child: PR_SET_KEEPCAPS: %s", strerror(errno));
	take(&child_snap);
	wl_pass_note("uid=%s eff=%s", child_snap.v[0], child_snap.v[5]);
	char c = 'c';
	if (write(ready_pipe[1], &c, 1) != 1)
		wl_fail("child: ready pipe: %s", strerror(errno));
	wl_wait_term();
	struct snap now;
	take(&now);
	compare("child", &child_snap, &now);
	if (!wl_failed() && !strcmp(child_snap.v[5], main_snap.v[5]) && !strcmp(child_snap.v[0], main_snap.v[0]) &&
	    child_snap.securebits == main_snap.securebits)
		wl_fail("child: its credentials were never different from its parent's");
	return wl_finish_as("verdict-child");
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		dprintf(2, "usage: creds EXPECT DIR\n");
		return 2;
	}
	wl_init(argc, argv, 2);
	take(&main_snap);
	wl_write("creds-start", "uid=%s gid=%s groups=%s inh=%s prm=%s eff=%s bnd=%s amb=%s nnp=%s securebits=%#x\n",
		 main_snap.v[0], main_snap.v[1], main_snap.v[2], main_snap.v[3], main_snap.v[4], main_snap.v[5],
		 main_snap.v[6], main_snap.v[7], main_snap.v[8], main_snap.securebits);
	check_expect(argv[1], &main_snap);
	if (pipe2(ready_pipe, O_CLOEXEC) != 0) {
		perror("pipe");
		return 2;
	}
	pthread_t t;
	if (pthread_create(&t, NULL, second_thread, NULL) != 0) {
		dprintf(2, "pthread_create failed\n");
		return 2;
	}
	char c;
	if (read(ready_pipe[0], &c, 1) != 1) {
		perror("waiting for the thread");
		return 2;
	}
	pid_t pid = fork();
	if (pid < 0) {
		perror("fork");
		return 2;
	}
	if (pid == 0) {
		/* Only the child's own failures go into its verdict. */
		wl_failure[0] = 0;
		_exit(child());
	}
	if (read(ready_pipe[0], &c, 1) != 1) {
		perror("waiting for the child");
		return 2;
	}
	wl_write("ready", "%d\n", (int)pid);
	wl_wait_term();

	kill(pid, SIGTERM);
	thread_stop = 1;
	pthread_join(t, NULL);
	if (wl_corrupt())
		lower_effective("main", lowest(hex(main_snap.v[5])));
	struct snap now;
	take(&now);
	compare("main thread", &main_snap, &now);
	int status = 0;
	waitpid(pid, &status, 0);
	char cv[600];
	if (wl_read("verdict-child", cv, sizeof(cv)) < 0)
		wl_fail("the child wrote no verdict (status %#x)", status);
	else if (strncmp(cv, "PASS", 4) != 0)
		wl_fail("child says %s", cv);
	if (!strcmp(thread_snap.v[5], main_snap.v[5]) && hex(main_snap.v[5]) != 0)
		wl_fail("thread: its effective set was never different from the main thread's");
	wl_pass_note("eff=%s thread_eff=%s", main_snap.v[5], thread_snap.v[5]);
	return wl_finish();
}
