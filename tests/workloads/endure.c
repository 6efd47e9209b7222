/* endure DIR: state that changes all the time, for long series of dump and
 * restore cycles, with a running checksum the workload can recompute.
 *
 * The main thread is paced by a timerfd (1 ms interval). Each tick is one
 * step i = 1, 2, ...: it changes one word of a 256 KiB private anonymous area
 * (which word and how depend only on i and the word's old value), folds the
 * new value into a running checksum, appends a 32-byte record of the step to
 * a journal file in /tmp (the sandbox's private tmpfs, so its contents travel
 * in the image; the fd is kept open with O_APPEND), and writes i into a pipe
 * to a child process. The child checks that it reads 1, 2, 3, ... without a
 * gap or a repeat and keeps its own count and checksum of what it read. Two
 * threads each keep a counter and a checksum of their own and a shared total
 * under a mutex, sleeping 1 ms per step. An interval timer (ITIMER_REAL,
 * 2 ms) and a POSIX timer (CLOCK_MONOTONIC, SIGUSR2, 3 ms) count their
 * signals in the main thread. DIR/count holds i (every 16
 * steps); DIR/ready appears after 50 steps.
 *
 * Every 1024 steps the main thread checks that both threads made progress
 * and that SIGALRM and SIGUSR2 came since the last check. On SIGTERM it stops the threads and checks, by
 * replaying steps 1..i from scratch: the memory area word for word, the
 * checksum, the journal's length, offset, O_APPEND and every record; each
 * thread's checksum against its counter, and the shared total against both
 * counters; that the timerfd still runs at a 1 ms interval and has ticked
 * at least i times, the interval timer at 2 ms and the POSIX timer at 3 ms. It closes the pipe; the child answers with its count and
 * checksum, which must be i and the replayed checksum of 1..i. */
#include "wl.h"

#include <pthread.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <sys/timerfd.h>
#include <sys/wait.h>

#define MEM_BYTES (256UL * 1024)
#define WORDS (MEM_BYTES / 8)
#define REC 32
#define THREADS 2
#define PROGRESS_WINDOW 1024

static uint64_t mix(uint64_t h, uint64_t v)
{
	h ^= v + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
	h *= 0xff51afd7ed558ccdULL;
	return h ^ (h >> 33);
}

/* One step of the memory state; returns the word's index. */
static size_t step_mem(uint64_t *mem, uint64_t *sum, uint64_t i)
{
	size_t w = (size_t)((i * 2654435761ULL) % WORDS);
	mem[w] = mix(mem[w], i);
	*sum = mix(*sum, mem[w] ^ w);
	return w;
}

static void record(char *out, uint64_t i, size_t w, uint64_t v)
{
	char tmp[REC + 1];
	snprintf(tmp, sizeof(tmp), "%010llu %05zu %014llx", (unsigned long long)i, w,
		 (unsigned long long)(v & 0xffffffffffffffULL));
	memcpy(out, tmp, REC - 1);
	out[REC - 1] = '\n';
}

static uint64_t *mem;
static uint64_t steps, checksum;
static uint64_t ticks;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static volatile int stop;
static struct {
	pthread_t t;
	volatile uint64_t count;
	uint64_t sum;
} th[THREADS];
static uint64_t total;
static volatile uint64_t alarms, usr2s;

static void on_alarm(int sig)
{
	if (sig == SIGALRM)
		alarms++;
	else
		usr2s++;
}

static void *worker(void *arg)
{
	long k = (long)arg;
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGALRM);
	sigaddset(&set, SIGUSR2);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	while (!stop) {
		pthread_mutex_lock(&mu);
		th[k].count++;
		th[k].sum = mix(th[k].sum, th[k].count * (uint64_t)(k + 7));
		total++;
		pthread_mutex_unlock(&mu);
		wl_sleep_ms(1);
	}
	return NULL;
}

/* The child: reads steps from `in`, answers with count and checksum on `out`. */
static int child(int in, int out)
{
	uint64_t count = 0, sum = 0, v;
	int bad = 0;
	for (;;) {
		ssize_t r = read(in, &v, sizeof(v));
		if (r == 0)
			break;
		if (r < 0 && errno == EINTR)
			continue;
		if (r != sizeof(v)) {
			bad = 1;
			break;
		}
		if (v != count + 1 && !bad) {
			dprintf(2, "endure child: read step %llu after %llu\n", (unsigned long long)v,
				(unsigned long long)count);
			bad = 1;
		}
		count++;
		sum = mix(sum, v);
	}
	uint64_t answer[3] = { count, sum, (uint64_t)bad };
	return write(out, answer, sizeof(answer)) == sizeof(answer) ? 0 : 3;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv, 1);
	signal(SIGPIPE, SIG_IGN);
	int down[2], up[2];
	if (pipe2(down, O_CLOEXEC) != 0 || pipe2(up, O_CLOEXEC) != 0) {
		perror("pipe");
		return 2;
	}
	pid_t pid = fork();
	if (pid < 0) {
		perror("fork");
		return 2;
	}
	if (pid == 0) {
		close(down[1]);
		close(up[0]);
		_exit(child(down[0], up[1]));
	}
	close(down[0]);
	close(up[1]);

	mem = mmap(NULL, MEM_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint64_t *replay = mmap(NULL, MEM_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED || replay == MAP_FAILED) {
		perror("mmap");
		return 2;
	}
	char journal[256];
	unsigned long long r = 0;
	if (getrandom(&r, sizeof(r), 0) != sizeof(r))
		r = (unsigned long long)getpid();
	snprintf(journal, sizeof(journal), "/tmp/endure-journal-%llx", r);
	int jfd = open(journal, O_RDWR | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0600);
	int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
	if (jfd < 0 || tfd < 0) {
		perror("journal or timerfd");
		return 2;
	}
	struct itimerspec its = { { 0, 1000000 }, { 0, 1000000 } };
	if (timerfd_settime(tfd, 0, &its, NULL) != 0) {
		perror("timerfd_settime");
		return 2;
	}
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_alarm;
	sa.sa_flags = SA_RESTART;
	sigemptyset(&sa.sa_mask);
	struct itimerval alarm_every = { { 0, 2000 }, { 0, 2000 } };
	if (sigaction(SIGALRM, &sa, NULL) != 0 || setitimer(ITIMER_REAL, &alarm_every, NULL) != 0) {
		perror("SIGALRM or setitimer");
		return 2;
	}
	timer_t posix_timer;
	struct sigevent sev;
	memset(&sev, 0, sizeof(sev));
	sev.sigev_notify = SIGEV_SIGNAL;
	sev.sigev_signo = SIGUSR2;
	struct itimerspec usr2_every = { { 0, 3000000 }, { 0, 3000000 } };
	if (sigaction(SIGUSR2, &sa, NULL) != 0 || timer_create(CLOCK_MONOTONIC, &sev, &posix_timer) != 0 ||
	    timer_settime(posix_timer, 0, &usr2_every, NULL) != 0) {
		perror("SIGUSR2 or the POSIX timer");
		return 2;
	}
	for (long k = 0; k < THREADS; k++)
		if (pthread_create(&th[k].t, NULL, worker, (void *)k) != 0) {
			dprintf(2, "pthread_create failed\n");
			return 2;
		}

	uint64_t seen[THREADS] = { 0 }, seen_alarms = 0, seen_usr2s = 0;
	while (!wl_term && !wl_failed()) {
		uint64_t n;
		ssize_t got = read(tfd, &n, sizeof(n));
		if (got < 0 && errno == EINTR)
			continue;
		if (got != sizeof(n)) {
			wl_fail("reading the timerfd gave %zd: %s", got, strerror(errno));
			break;
		}
		ticks += n;
		uint64_t i = ++steps;
		size_t w = step_mem(mem, &checksum, i);
		char rec[REC];
		record(rec, i, w, mem[w]);
		if (write(jfd, rec, REC) != REC)
			wl_fail("step %llu: appending to the journal: %s", (unsigned long long)i, strerror(errno));
		if (write(down[1], &i, sizeof(i)) != sizeof(i))
			wl_fail("step %llu: writing to the child: %s", (unsigned long long)i, strerror(errno));
		if (i % PROGRESS_WINDOW == 0) {
			for (int k = 0; k < THREADS; k++) {
				uint64_t c = th[k].count;
				if (c == seen[k])
					wl_fail("thread %d made no step during the last %d steps (still %llu)", k,
						PROGRESS_WINDOW, (unsigned long long)c);
				seen[k] = c;
			}
			uint64_t a = alarms;
			if (a == seen_alarms)
				wl_fail("no SIGALRM during the last %d steps (still %llu)", PROGRESS_WINDOW,
					(unsigned long long)a);
			seen_alarms = a;
			a = usr2s;
			if (a == seen_usr2s)
				wl_fail("no SIGUSR2 from the POSIX timer during the last %d steps (still %llu)",
					PROGRESS_WINDOW, (unsigned long long)a);
			seen_usr2s = a;
		}
		if (i % 16 == 0)
			wl_write("count", "%llu\n", (unsigned long long)i);
		if (i == 50)
			wl_write("ready", "%llu\n", (unsigned long long)i);
	}

	struct itimerval it, off = { { 0, 0 }, { 0, 0 } };
	if (getitimer(ITIMER_REAL, &it) != 0 || it.it_interval.tv_sec != 0 || it.it_interval.tv_usec != 2000)
		wl_fail("ITIMER_REAL interval is %ld.%06ld s, expected 0.002", (long)it.it_interval.tv_sec,
			(long)it.it_interval.tv_usec);
	setitimer(ITIMER_REAL, &off, NULL);
	struct itimerspec pt;
	if (timer_gettime(posix_timer, &pt) != 0 || pt.it_interval.tv_sec != 0 || pt.it_interval.tv_nsec != 3000000)
		wl_fail("POSIX timer interval is %ld.%09ld s, expected 0.003", (long)pt.it_interval.tv_sec,
			pt.it_interval.tv_nsec);
	timer_delete(posix_timer);
	stop = 1;
	for (int k = 0; k < THREADS; k++)
		pthread_join(th[k].t, NULL);
	if (wl_corrupt())
		mem[(steps * 7) % WORDS] ^= 1;

	/* Memory and checksum, replayed from scratch. */
	uint64_t sum = 0;
	for (uint64_t i = 1; i <= steps; i++)
		step_mem(replay, &sum, i);
	for (size_t w = 0; w < WORDS; w++)
		if (mem[w] != replay[w]) {
			wl_fail("memory word %zu is %llx, replaying %llu steps gives %llx", w,
				(unsigned long long)mem[w], (unsigned long long)steps, (unsigned long long)replay[w]);
			break;
		}
	if (sum != checksum)
		wl_fail("checksum is %llx, replaying %llu steps gives %llx", (unsigned long long)checksum,
			(unsigned long long)steps, (unsigned long long)sum);

	/* The journal: every record, the offset and the flags of its fd. */
	int fl = fcntl(jfd, F_GETFL);
	if (fl < 0 || !(fl & O_APPEND) || (fl & O_ACCMODE) != O_RDWR)
		wl_fail("journal fd flags are %#x, expected O_RDWR|O_APPEND", fl);
	off_t pos = lseek(jfd, 0, SEEK_CUR);
	struct stat st;
	if (fstat(jfd, &st) != 0 || st.st_size != (off_t)(steps * REC) || pos != st.st_size)
		wl_fail("journal holds %lld bytes at offset %lld, expected %llu", (long long)st.st_size, (long long)pos,
			(unsigned long long)(steps * REC));
	memset(replay, 0, MEM_BYTES);
	sum = 0;
	for (uint64_t i = 1; i <= steps && !wl_failed(); i++) {
		size_t w = step_mem(replay, &sum, i);
		char want[REC], have[REC];
		record(want, i, w, replay[w]);
		if (pread(jfd, have, REC, (off_t)((i - 1) * REC)) != REC || memcmp(want, have, REC) != 0)
			wl_fail("journal record %llu is not the record of step %llu", (unsigned long long)i,
				(unsigned long long)i);
	}
	unlink(journal);

	/* Threads. */
	uint64_t both = 0;
	for (int k = 0; k < THREADS; k++) {
		uint64_t s = 0;
		for (uint64_t c = 1; c <= th[k].count; c++)
			s = mix(s, c * (uint64_t)(k + 7));
		if (s != th[k].sum)
			wl_fail("thread %d: checksum does not match its %llu steps", k, (unsigned long long)th[k].count);
		both += th[k].count;
	}
	if (both != total)
		wl_fail("shared total is %llu, the threads made %llu steps", (unsigned long long)total,
			(unsigned long long)both);

	/* The timer. */
	struct itimerspec now;
	if (timerfd_gettime(tfd, &now) != 0 || now.it_interval.tv_sec != 0 || now.it_interval.tv_nsec != 1000000)
		wl_fail("timerfd interval is %ld.%09ld s, expected 0.001", (long)now.it_interval.tv_sec,
			now.it_interval.tv_nsec);
	if (ticks < steps)
		wl_fail("timerfd ticked %llu times for %llu steps", (unsigned long long)ticks,
			(unsigned long long)steps);

	/* The child. */
	close(down[1]);
	uint64_t answer[3] = { 0, 0, 0 };
	ssize_t got;
	do
		got = read(up[0], answer, sizeof(answer));
	while (got < 0 && errno == EINTR);
	int status = 0;
	waitpid(pid, &status, 0);
	uint64_t want = 0;
	for (uint64_t i = 1; i <= steps; i++)
		want = mix(want, i);
	if (got != sizeof(answer))
		wl_fail("the child gave no answer (read %zd), status %#x", got, status);
	else if (answer[2])
		wl_fail("the child read the steps out of order (count %llu)", (unsigned long long)answer[0]);
	else if (answer[0] != steps || answer[1] != want)
		wl_fail("the child read %llu steps (checksum %llx), expected %llu (%llx)", (unsigned long long)answer[0],
			(unsigned long long)answer[1], (unsigned long long)steps, (unsigned long long)want);
	else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		wl_fail("the child ended with status %#x", status);

	wl_pass_note("steps=%llu thread0=%llu thread1=%llu alarms=%llu usr2=%llu", (unsigned long long)steps,
		     (unsigned long long)th[0].count, (unsigned long long)th[1].count, (unsigned long long)alarms,
		     (unsigned long long)usr2s);
	return wl_finish();
}
