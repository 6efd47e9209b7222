/* procattrs DIR: scheduling and process attributes a restore must put back.
 *
 * The main thread lowers its priority (nice 7 above the one it started with) and becomes a child
 * subreaper; its oom_score_adj goes to 321. Four more threads take other
 * scheduling policies: SCHED_BATCH with nice 3, SCHED_IDLE, SCHED_FIFO
 * priority 11 with SCHED_RESET_ON_FORK, SCHED_RR priority 5. Each thread
 * records what the kernel reports for itself (sched_getattr) once it is set;
 * on SIGTERM each compares its attributes with that record (after a restore
 * they must be exactly what they were), the main thread checks
 * PR_GET_CHILD_SUBREAPER and /proc/self/oom_score_adj, and writes the
 * verdict. With STASIS_TEST_CORRUPT=1 the main thread changes its nice
 * value before its check. */
#include "wl.h"

#include <pthread.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>

struct sattr {
	uint32_t size, policy;
	uint64_t flags;
	int32_t nice;
	uint32_t priority;
	uint64_t runtime, deadline, period;
	uint32_t util_min, util_max;
};

static int get(struct sattr *a)
{
	memset(a, 0, sizeof(*a));
	return (int)syscall(SYS_sched_getattr, 0, a, (unsigned)sizeof(*a), 0);
}

static int set(uint32_t policy, uint64_t flags, int nice, uint32_t prio)
{
	struct sattr a;
	memset(&a, 0, sizeof(a));
	a.size = sizeof(a);
	a.policy = policy;
	a.flags = flags;
	a.nice = nice;
	a.priority = prio;
	return (int)syscall(SYS_sched_setattr, 0, &a, 0);
}

struct want {
	const char *name;
	uint32_t policy;
	uint64_t flags;
	int nice;
	uint32_t prio;
	struct sattr before;
	int ready;
};

static struct want wants[] = {
	{ "main", SCHED_OTHER, 0, 7, 0, { 0 }, 0 },
	{ "batch", SCHED_BATCH, 0, 3, 0, { 0 }, 0 },
	{ "idle", SCHED_IDLE, 0, 0, 0, { 0 }, 0 },
	{ "fifo", SCHED_FIFO, 1 /* SCHED_FLAG_RESET_ON_FORK */, 0, 11, { 0 }, 0 },
	{ "rr", SCHED_RR, 0, 0, 5, { 0 }, 0 },
};
#define NWANT (sizeof(wants) / sizeof(wants[0]))

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int go_check, done_checks;

static void compare(struct want *w)
{
	struct sattr now;
	if (get(&now) != 0) {
		wl_fail("%s: sched_getattr: %s", w->name, strerror(errno));
		return;
	}
	if (now.policy != w->before.policy || now.flags != w->before.flags || now.nice != w->before.nice ||
	    now.priority != w->before.priority)
		wl_fail("%s: policy %u flags %#llx nice %d priority %u, was policy %u flags %#llx nice %d priority %u",
			w->name, now.policy, (unsigned long long)now.flags, now.nice, now.priority, w->before.policy,
			(unsigned long long)w->before.flags, w->before.nice, w->before.priority);
}

/* Nice values are taken relative to the one the workload started with
 * (raising one's nice value needs no privilege; lowering it does). */
static int base_nice;

static void take(struct want *w)
{
	if (w->nice) {
		w->nice += base_nice;
		if (w->nice > 19)
			w->nice = 19;
	}
	if (set(w->policy, w->flags, w->nice, w->prio) != 0)
		wl_fail("%s: sched_setattr: %s", w->name, strerror(errno));
	if (get(&w->before) != 0)
		wl_fail("%s: sched_getattr: %s", w->name, strerror(errno));
	/* The nice value of a SCHED_IDLE or real-time thread is the kernel's to report. */
	int nice_kept = w->policy == SCHED_OTHER || w->policy == SCHED_BATCH;
	if (w->before.policy != w->policy || (nice_kept && w->before.nice != w->nice) ||
	    w->before.priority != w->prio)
		wl_fail("%s: the kernel did not take policy %u nice %d priority %u (it has %u, %d, %u)", w->name,
			w->policy, w->nice, w->prio, w->before.policy, w->before.nice, w->before.priority);
}

static void *thread_main(void *arg)
{
	struct want *w = arg;
	take(w);
	pthread_mutex_lock(&lock);
	w->ready = 1;
	pthread_cond_broadcast(&cond);
	while (!go_check)
		pthread_cond_wait(&cond, &lock);
	pthread_mutex_unlock(&lock);
	compare(w);
	pthread_mutex_lock(&lock);
	done_checks++;
	pthread_cond_broadcast(&cond);
	pthread_mutex_unlock(&lock);
	return NULL;
}

static int read_adj(void)
{
	char buf[32] = { 0 };
	int fd = open("/proc/self/oom_score_adj", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -9999;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	return n > 0 ? atoi(buf) : -9999;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv, 1);
	errno = 0;
	base_nice = getpriority(PRIO_PROCESS, 0);
	if (errno)
		base_nice = 0;
	/* SIGTERM reaches the main thread only. */
	sigset_t term;
	sigemptyset(&term);
	sigaddset(&term, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &term, NULL);
	pthread_t th[NWANT];
	for (size_t i = 1; i < NWANT; i++)
		if (pthread_create(&th[i], NULL, thread_main, &wants[i]) != 0) {
			dprintf(2, "pthread_create failed\n");
			return 2;
		}
	pthread_sigmask(SIG_UNBLOCK, &term, NULL);
	take(&wants[0]);
	if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0)
		wl_fail("PR_SET_CHILD_SUBREAPER: %s", strerror(errno));
	int fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
	if (fd < 0 || write(fd, "321", 3) != 3)
		wl_fail("writing oom_score_adj: %s", strerror(errno));
	if (fd >= 0)
		close(fd);
	pthread_mutex_lock(&lock);
	for (size_t i = 1; i < NWANT; i++)
		while (!wants[i].ready)
			pthread_cond_wait(&cond, &lock);
	pthread_mutex_unlock(&lock);
	wl_write("ready", "%d\n", getpid());

	wl_wait_term();
	if (wl_corrupt())
		setpriority(PRIO_PROCESS, 0, 9);
	compare(&wants[0]);
	int sub = -1;
	if (prctl(PR_GET_CHILD_SUBREAPER, &sub, 0, 0, 0) != 0 || sub != 1)
		wl_fail("child subreaper is %d, was 1", sub);
	int adj = read_adj();
	if (adj != 321)
		wl_fail("oom_score_adj is %d, was 321", adj);
	pthread_mutex_lock(&lock);
	go_check = 1;
	pthread_cond_broadcast(&cond);
	while (done_checks < (int)NWANT - 1)
		pthread_cond_wait(&cond, &lock);
	pthread_mutex_unlock(&lock);
	return wl_finish();
}
