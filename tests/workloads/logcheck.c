/* logcheck DIR: what a workload wrote to its log before a dump is still in
 * the log after the restore, and what it writes after is appended.
 *
 * Writes 200 numbered lines carrying a random token to stdout (the
 * sandbox's log), then DIR/ready. After SIGTERM it writes one more line,
 * reopens its stdout (/proc/self/fd/1: the sandbox's log file) for reading
 * and checks that the log is exactly the 200 lines, in order, then that
 * line: nothing lost, nothing doubled, nothing between. */
#include "wl.h"

#define LINES 200

int main(int argc, char **argv)
{
	wl_init(argc, argv, 1);
	unsigned long long token = 0;
	if (getrandom(&token, sizeof(token), 0) != sizeof(token))
		token = (unsigned long long)time(NULL);
	static char expect[LINES * 64 + 128];
	size_t len = 0;
	for (int i = 1; i <= LINES; i++) {
		char line[64];
		int n = snprintf(line, sizeof(line), "log line %d of %llx\n", i, token);
		if (write(1, line, (size_t)n) != n) {
			perror("write to the log");
			return 2;
		}
		memcpy(expect + len, line, (size_t)n);
		len += (size_t)n;
	}
	wl_write("ready", "%llx\n", token);

	wl_wait_term();

	char last[64];
	int n = snprintf(last, sizeof(last), "after the restore: %llx\n", token);
	if (write(1, last, (size_t)n) != n)
		wl_fail("writing to the log: %s", strerror(errno));
	memcpy(expect + len, last, (size_t)n);
	len += (size_t)n;
	if (wl_corrupt())
		expect[0] ^= 1;

	static char got[sizeof(expect) + 4096];
	size_t have = 0;
	int fd = open("/proc/self/fd/1", O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		wl_fail("reopening stdout for reading: %s", strerror(errno));
	} else {
		ssize_t r;
		while (have < sizeof(got) && (r = read(fd, got + have, sizeof(got) - have)) > 0)
			have += (size_t)r;
		close(fd);
		if (have != len)
			wl_fail("the log holds %zu bytes, expected %zu", have, len);
		else if (memcmp(got, expect, len) != 0)
			wl_fail("the log differs from the %d lines written before and the one after", LINES);
	}
	return wl_finish();
}
