/* signals DIR: handlers, blocked pending signals, an alternate stack.
 *
 * SIGUSR1 has an SA_SIGINFO|SA_RESTART|SA_ONSTACK handler (mask: SIGWINCH,
 * SIGUSR2); SIGRTMIN+2 and SIGRTMIN+3 have SA_SIGINFO handlers; SIGUSR2 is
 * ignored. SIGUSR1, SIGRTMIN+2, SIGRTMIN+3 and SIGWINCH are blocked. Pending
 * before ready: SIGUSR1 from sigqueue (value 0x5eed, process queue),
 * SIGRTMIN+2 twice (values 1 then 2, process queue), SIGRTMIN+3 from tgkill
 * (thread queue). On SIGTERM: the mask, the pending set, the handlers and
 * the alternate stack must be as before; unblocking must then run each
 * handler with the right siginfo, SIGUSR1's on the alternate stack; raising
 * SIGUSR2 must do nothing. */
#include "wl.h"

#include <sys/mman.h>
#include <sys/syscall.h>

#define ALT_BYTES (64 * 1024)

static unsigned char *alt;
static volatile int usr1_runs, usr1_code, usr1_value, usr1_pid, usr1_on_alt;
static volatile int rt2_runs, rt2_values[8];
static volatile int rt3_runs, rt3_code;

static void on_usr1(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	int here;
	usr1_runs++;
	usr1_code = si->si_code;
	usr1_value = si->si_value.sival_int;
	usr1_pid = si->si_pid;
	usr1_on_alt = (unsigned char *)&here >= alt && (unsigned char *)&here < alt + ALT_BYTES;
}

static void on_rt2(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	if (rt2_runs < 8)
		rt2_values[rt2_runs] = si->si_value.sival_int;
	rt2_runs++;
}

static void on_rt3(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	rt3_runs++;
	rt3_code = si->si_code;
}

static void handle(int sig, void (*fn)(int, siginfo_t *, void *), int flags, const sigset_t *mask)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = fn;
	sa.sa_flags = SA_SIGINFO | flags;
	if (mask)
		sa.sa_mask = *mask;
	else
		sigemptyset(&sa.sa_mask);
	if (sigaction(sig, &sa, NULL) != 0) {
		perror("sigaction");
		exit(2);
	}
}

static void expect_action(int sig, const char *name, const struct sigaction *before)
{
	struct sigaction now;
	if (sigaction(sig, NULL, &now) != 0) {
		wl_fail("sigaction(%s) query: %s", name, strerror(errno));
		return;
	}
	if ((void *)now.sa_sigaction != (void *)before->sa_sigaction)
		wl_fail("%s: handler is %p, was %p", name, (void *)now.sa_sigaction, (void *)before->sa_sigaction);
	if (now.sa_flags != before->sa_flags)
		wl_fail("%s: sa_flags are %#x, were %#x", name, now.sa_flags, before->sa_flags);
	for (int s = 1; s < NSIG; s++)
		if (sigismember(&now.sa_mask, s) != sigismember(&before->sa_mask, s)) {
			wl_fail("%s: signal %d is %s the handler's mask, it was not", name, s,
				sigismember(&now.sa_mask, s) ? "in" : "not in");
			break;
		}
}

int main(int argc, char **argv)
{
	wl_init(argc, argv, 1);
	int rt2 = SIGRTMIN + 2, rt3 = SIGRTMIN + 3;

	alt = mmap(NULL, ALT_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	stack_t ss = { .ss_sp = alt, .ss_size = ALT_BYTES, .ss_flags = 0 };
	if (alt == MAP_FAILED || sigaltstack(&ss, NULL) != 0) {
		perror("sigaltstack");
		return 2;
	}
	sigset_t usr1_mask;
	sigemptyset(&usr1_mask);
	sigaddset(&usr1_mask, SIGWINCH);
	sigaddset(&usr1_mask, SIGUSR2);
	handle(SIGUSR1, on_usr1, SA_RESTART | SA_ONSTACK, &usr1_mask);
	handle(rt2, on_rt2, 0, NULL);
	handle(rt3, on_rt3, SA_RESTART, NULL);
	signal(SIGUSR2, SIG_IGN);

	sigset_t blocked;
	sigemptyset(&blocked);
	sigaddset(&blocked, SIGUSR1);
	sigaddset(&blocked, rt2);
	sigaddset(&blocked, rt3);
	sigaddset(&blocked, SIGWINCH);
	sigprocmask(SIG_BLOCK, &blocked, NULL);
	if (sigqueue(getpid(), SIGUSR1, (union sigval){ .sival_int = 0x5eed }) != 0 ||
	    sigqueue(getpid(), rt2, (union sigval){ .sival_int = 1 }) != 0 ||
	    sigqueue(getpid(), rt2, (union sigval){ .sival_int = 2 }) != 0 ||
	    syscall(SYS_tgkill, getpid(), gettid(), rt3) != 0) {
		perror("queueing signals");
		return 2;
	}

	struct sigaction act_usr1, act_rt2, act_rt3;
	sigaction(SIGUSR1, NULL, &act_usr1);
	sigaction(rt2, NULL, &act_rt2);
	sigaction(rt3, NULL, &act_rt3);
	sigset_t mask_before;
	sigprocmask(SIG_BLOCK, NULL, &mask_before);
	stack_t ss_before;
	sigaltstack(NULL, &ss_before);
	wl_write("ready", "ready\n");

	wl_wait_term();

	if (wl_corrupt())
		sigqueue(getpid(), rt2, (union sigval){ .sival_int = 3 });

	sigset_t mask_now, pending;
	sigprocmask(SIG_BLOCK, NULL, &mask_now);
	for (int s = 1; s < NSIG; s++)
		if (sigismember(&mask_now, s) != sigismember(&mask_before, s)) {
			wl_fail("signal %d is %s, it was %s", s, sigismember(&mask_now, s) ? "blocked" : "not blocked",
				sigismember(&mask_before, s) ? "blocked" : "not blocked");
			break;
		}
	sigpending(&pending);
	int want_pending[] = { SIGUSR1, rt2, rt3 };
	for (size_t i = 0; i < 3; i++)
		if (!sigismember(&pending, want_pending[i]))
			wl_fail("signal %d is no longer pending", want_pending[i]);
	if (sigismember(&pending, SIGWINCH))
		wl_fail("SIGWINCH is pending, it was not");
	stack_t ss_now;
	sigaltstack(NULL, &ss_now);
	if (ss_now.ss_sp != ss_before.ss_sp || ss_now.ss_size != ss_before.ss_size ||
	    ss_now.ss_flags != ss_before.ss_flags)
		wl_fail("sigaltstack is sp %p size %zu flags %d, was sp %p size %zu flags %d", ss_now.ss_sp,
			ss_now.ss_size, ss_now.ss_flags, ss_before.ss_sp, ss_before.ss_size, ss_before.ss_flags);
	expect_action(SIGUSR1, "SIGUSR1", &act_usr1);
	expect_action(rt2, "SIGRTMIN+2", &act_rt2);
	expect_action(rt3, "SIGRTMIN+3", &act_rt3);
	struct sigaction ign;
	sigaction(SIGUSR2, NULL, &ign);
	if (ign.sa_handler != SIG_IGN)
		wl_fail("SIGUSR2 is no longer ignored (handler %p)", (void *)ign.sa_handler);
	if (usr1_runs || rt2_runs || rt3_runs)
		wl_fail("handlers ran while their signals were blocked (%d %d %d)", usr1_runs, rt2_runs, rt3_runs);

	sigset_t unblock;
	sigemptyset(&unblock);
	sigaddset(&unblock, SIGUSR1);
	sigaddset(&unblock, rt2);
	sigaddset(&unblock, rt3);
	sigprocmask(SIG_UNBLOCK, &unblock, NULL); /* the pending signals are delivered here */

	if (usr1_runs != 1)
		wl_fail("SIGUSR1 handler ran %d times, expected once", usr1_runs);
	else if (usr1_code != SI_QUEUE || usr1_value != 0x5eed || usr1_pid != getpid())
		wl_fail("SIGUSR1 siginfo: code %d value %#x pid %d, expected SI_QUEUE (%d) 0x5eed %d", usr1_code,
			usr1_value, usr1_pid, SI_QUEUE, (int)getpid());
	else if (!usr1_on_alt)
		wl_fail("SIGUSR1 handler did not run on the alternate stack");
	if (rt2_runs != 2 || rt2_values[0] != 1 || rt2_values[1] != 2)
		wl_fail("SIGRTMIN+2 handler ran %d times with values %d, %d; expected twice, 1 then 2", rt2_runs,
			rt2_values[0], rt2_values[1]);
	if (rt3_runs != 1 || rt3_code != SI_TKILL)
		wl_fail("SIGRTMIN+3 handler ran %d times, code %d; expected once with SI_TKILL (%d)", rt3_runs,
			rt3_code, SI_TKILL);
	raise(SIGUSR2); /* ignored: nothing happens */
	return wl_finish();
}
