/* counter DIR: a counter loop.
 *
 * State: `counter` in .bss, its complement in a private anonymous page, and a
 * token kept twice: in the heap and in a shared anonymous page. Every 1 ms
 * the counter goes up; every 32 steps DIR/count is rewritten with it.
 * On SIGUSR1 the workload takes DIR/cmd as its new token (both copies) and
 * answers with DIR/ack-<token>: two restored copies of one image must each
 * keep their own token. On SIGTERM it checks that the counter and its
 * complement agree, that the counter went past its value at ready, that both
 * copies of the token agree, that the memory map is the one it had, and that
 * /, /proc, /tmp and /dev/shm are mounted with the file system types they
 * had. */
#include "wl.h"

#include <sys/mman.h>

static volatile uint64_t counter;
static volatile sig_atomic_t got_usr1;
static struct wl_map maps_before[WL_MAPS_MAX], maps_after[WL_MAPS_MAX];

/* File system type of the last mount at `dir` in /proc/self/mounts ("" if none). */
static void mount_type(const char *dir, char *out, size_t size)
{
	static char buf[1 << 16];
	out[0] = 0;
	int fd = open("/proc/self/mounts", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	size_t len = 0;
	ssize_t r;
	while ((r = read(fd, buf + len, sizeof(buf) - 1 - len)) > 0)
		len += (size_t)r;
	close(fd);
	buf[len] = 0;
	for (char *line = buf; line && *line;) {
		char *next = strchr(line, '\n');
		if (next)
			*next++ = 0;
		char src[256], at[256], type[64];
		if (sscanf(line, "%255s %255s %63s", src, at, type) == 3 && !strcmp(at, dir))
			snprintf(out, size, "%s", type);
		line = next;
	}
}

static const char *mounts[] = { "/", "/proc", "/tmp", "/dev/shm" };
static char mount_types[4][64];

static void on_usr1(int sig)
{
	(void)sig;
	got_usr1 = 1;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv, 1);
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, NULL);

	volatile uint64_t *shadow = mmap(NULL, WL_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char *shm_token = mmap(NULL, WL_PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	char *heap_token = malloc(64);
	if (shadow == MAP_FAILED || shm_token == MAP_FAILED || !heap_token) {
		perror("allocating state");
		return 2;
	}
	strcpy(heap_token, "none");
	strcpy(shm_token, "none");

	for (int i = 0; i < 100; i++) {
		counter++;
		*shadow = ~counter;
	}
	uint64_t at_ready = counter;
	int nmaps = wl_maps_read(maps_before, WL_MAPS_MAX);
	for (int m = 0; m < 4; m++)
		mount_type(mounts[m], mount_types[m], sizeof(mount_types[m]));
	wl_write("count", "%llu\n", (unsigned long long)counter);
	wl_write("ready", "%llu\n", (unsigned long long)at_ready);

	while (!wl_term) {
		counter++;
		*shadow = ~counter;
		if (counter % 32 == 0)
			wl_write("count", "%llu\n", (unsigned long long)counter);
		if (got_usr1) {
			got_usr1 = 0;
			char token[64];
			if (wl_read("cmd", token, 33) > 0) {
				strcpy(heap_token, token);
				strcpy(shm_token, token);
				char ack[128];
				snprintf(ack, sizeof(ack), "ack-%s", token);
				wl_write(ack, "%s\n", token);
			}
		}
		wl_sleep_ms(1);
	}

	if (wl_corrupt())
		*shadow ^= 1;
	wl_maps_expect_same(maps_before, nmaps, maps_after, wl_maps_read(maps_after, WL_MAPS_MAX));
	for (int m = 0; m < 4; m++) {
		char now[64];
		mount_type(mounts[m], now, sizeof(now));
		if (strcmp(now, mount_types[m]) != 0)
			wl_fail("%s is mounted as %s, it was %s", mounts[m], now[0] ? now : "nothing",
				mount_types[m][0] ? mount_types[m] : "nothing");
	}
	if (*shadow != ~counter)
		wl_fail("counter is %llu but its shadow copy says %llu", (unsigned long long)counter,
			(unsigned long long)~*shadow);
	if (counter <= at_ready)
		wl_fail("counter %llu did not go past its value at ready, %llu", (unsigned long long)counter,
			(unsigned long long)at_ready);
	if (strcmp(heap_token, shm_token) != 0)
		wl_fail("token in the heap is %s but in the shared anonymous page it is %s", heap_token, shm_token);
	wl_pass_note("count=%llu token=%s", (unsigned long long)counter, heap_token);
	/* On stdout, that is in the sandbox's log, before the verdict. */
	dprintf(1, "counter: stopping at %llu\n", (unsigned long long)counter);
	return wl_finish();
}
