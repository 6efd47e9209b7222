/* threads [N] DIR: a process with N threads (default 32).
 *
 * State per thread: its TID, a thread-local value derived from its index, a
 * signal mask of its own (it blocks SIGRTMIN + index % 8), an alternate
 * signal stack of its own, and a counter it keeps going (with a short sleep
 * every 256 steps, so threads are caught both running and inside nanosleep).
 * On SIGTERM each thread checks that its TID, thread-local value, mask and
 * alternate stack are as they were and that its counter went on after the
 * restore; the main thread joins them all and writes the verdict. */
#define _GNU_SOURCE
#include "wl.h"

#include <pthread.h>
#include <sys/syscall.h>

#define MAX_THREADS 256

struct worker {
	pthread_t thread;
	int index;
	pid_t tid;
	volatile uint64_t count;
	uint64_t at_ready;
	char altstack[16384];
	int ok;
};

static struct worker workers[MAX_THREADS];
static volatile int started, stop;
static __thread uint64_t tls_value;

static void *run(void *arg)
{
	struct worker *w = arg;
	w->tid = (pid_t)syscall(SYS_gettid);
	tls_value = 0x5eed0000ULL + (uint64_t)w->index;
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGRTMIN + w->index % 8);
	sigaddset(&set, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	stack_t ss = { .ss_sp = w->altstack, .ss_size = sizeof(w->altstack), .ss_flags = 0 };
	sigaltstack(&ss, NULL);
	__atomic_add_fetch(&started, 1, __ATOMIC_SEQ_CST);
	while (!stop) {
		w->count++;
		if (w->count % 256 == 0)
			wl_sleep_ms(1);
	}
	w->ok = 1;
	if ((pid_t)syscall(SYS_gettid) != w->tid) {
		wl_fail("thread %d: TID %ld, was %d", w->index, syscall(SYS_gettid), w->tid);
		w->ok = 0;
	}
	if (tls_value != 0x5eed0000ULL + (uint64_t)w->index) {
		wl_fail("thread %d: thread-local value %llx", w->index, (unsigned long long)tls_value);
		w->ok = 0;
	}
	sigset_t now;
	pthread_sigmask(SIG_BLOCK, NULL, &now);
	for (int s = 1; s < 65; s++) {
		if (s == SIGKILL || s == SIGSTOP)
			continue;
		if (sigismember(&now, s) != sigismember(&set, s)) {
			wl_fail("thread %d: signal %d is %sblocked", w->index, s, sigismember(&now, s) ? "" : "not ");
			w->ok = 0;
			break;
		}
	}
	stack_t cur;
	sigaltstack(NULL, &cur);
	if (cur.ss_sp != w->altstack || cur.ss_size != sizeof(w->altstack)) {
		wl_fail("thread %d: alternate stack %p+%zu, was %p+%zu", w->index, cur.ss_sp, cur.ss_size,
			(void *)w->altstack, sizeof(w->altstack));
		w->ok = 0;
	}
	return NULL;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv, argc > 2 ? 2 : 1);
	int n = argc > 2 ? atoi(argv[1]) : 32;
	if (n < 1 || n > MAX_THREADS)
		n = 32;
	for (int i = 0; i < n; i++) {
		workers[i].index = i;
		if (pthread_create(&workers[i].thread, NULL, run, &workers[i]) != 0) {
			perror("pthread_create");
			return 2;
		}
	}
	while (started < n)
		wl_sleep_ms(1);
	for (int i = 0; i < n; i++) {
		while (workers[i].count == 0)
			wl_sleep_ms(1);
		workers[i].at_ready = workers[i].count;
	}
	FILE *f = NULL;
	char tids[8192] = "";
	size_t len = 0;
	for (int i = 0; i < n && len < sizeof(tids) - 16; i++)
		len += (size_t)snprintf(tids + len, sizeof(tids) - len, "%d\n", workers[i].tid);
	(void)f;
	wl_write("tids", "%s", tids);
	wl_write("ready", "%d\n", n);
	wl_wait_term();
	if (wl_corrupt())
		workers[0].tid++;
	/* Every counter must move on from here. */
	uint64_t at_term[MAX_THREADS];
	for (int i = 0; i < n; i++)
		at_term[i] = workers[i].count;
	for (int i = 0; i < n; i++) {
		for (int k = 0; k < 5000 && workers[i].count == at_term[i]; k++)
			wl_sleep_ms(1);
		if (workers[i].count == at_term[i])
			wl_fail("thread %d stopped counting at %llu", i, (unsigned long long)at_term[i]);
	}
	stop = 1;
	int ok = 0;
	for (int i = 0; i < n; i++) {
		pthread_join(workers[i].thread, NULL);
		ok += workers[i].ok;
	}
	if (ok != n && !wl_failed())
		wl_fail("%d of %d threads failed their checks", n - ok, n);
	printf("threads: %d threads checked\n", n);
	return wl_finish();
}
