/* membarrier registrations across a dump and restore: every expedited kind
 * the kernel supports is registered (global, private, private sync-core,
 * private rseq); after restore MEMBARRIER_CMD_GET_REGISTRATIONS must report
 * the same set, and each private expedited barrier must be allowed (an
 * unregistered process gets EPERM).
 *
 * usage: membarrier DIR */
#include "wl.h"

#include <sys/syscall.h>

#define CMD_QUERY 0
#define CMD_GET_REGISTRATIONS (1 << 9)

static const int REGISTER[] = { 1 << 2, 1 << 4, 1 << 6, 1 << 8 };

static long mb(int cmd)
{
	return syscall(SYS_membarrier, cmd, 0, 0);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv, 1);
	long supported = mb(CMD_QUERY);
	if (supported < 0) {
		dprintf(2, "membarrier query: %s\n", strerror(errno));
		return 2;
	}
	long registered = 0;
	for (size_t i = 0; i < sizeof(REGISTER) / sizeof(REGISTER[0]); i++) {
		if (!(supported & REGISTER[i]))
			continue;
		if (mb(REGISTER[i]) != 0) {
			dprintf(2, "membarrier register %#x: %s\n", REGISTER[i], strerror(errno));
			return 2;
		}
		registered |= REGISTER[i];
	}
	long got = mb(CMD_GET_REGISTRATIONS);
	if (!registered || got < 0 || (got & registered) != registered) {
		dprintf(2, "membarrier: registered %#lx, the kernel reports %#lx\n", registered, got);
		return 2;
	}
	wl_write("ready", "ready\n");
	wl_wait_term();

	long expect = got;
	if (wl_corrupt())
		expect ^= REGISTER[1];
	long now = mb(CMD_GET_REGISTRATIONS);
	if (now != expect)
		wl_fail("membarrier registrations are %#lx, were %#lx", now, expect);
	/* Each private kind registered may be issued. */
	for (size_t i = 1; i < sizeof(REGISTER) / sizeof(REGISTER[0]); i++)
		if ((registered & REGISTER[i]) && mb(REGISTER[i] >> 1) != 0)
			wl_fail("membarrier(%#x) after restore: %s", REGISTER[i] >> 1, strerror(errno));
	wl_pass_note("registered=%#lx", registered);
	return wl_finish();
}
