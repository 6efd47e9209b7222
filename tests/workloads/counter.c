/* counter DIR: a counter loop.
 *
 * State: `counter` in .bss, its complement in a private anonymous page, and a
 * token kept twice: in the heap and in a shared anonymous page. Every 1 ms
 * the counter goes up; every 32 steps DIR/count is rewritten with it.
 * On SIGUSR1 the workload takes DIR/cmd as its new token (both copies) and
 * answers with DIR/ack-<token>: two restored copies of one image must each
 * keep their own token. On SIGTERM it checks that the counter and its
 * complement agree, that the counter went past its value at ready, that both
 * copies of the token agree and that the memory map is the one it had. */
#include "wl.h"

#include <sys/mman.h>

static volatile uint64_t counter;
static volatile sig_atomic_t got_usr1;
static struct wl_map maps_before[WL_MAPS_MAX], maps_after[WL_MAPS_MAX];

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
	if (*shadow != ~counter)
		wl_fail("counter is %llu but its shadow copy says %llu", (unsigned long long)counter,
			(unsigned long long)~*shadow);
	if (counter <= at_ready)
		wl_fail("counter %llu did not go past its value at ready, %llu", (unsigned long long)counter,
			(unsigned long long)at_ready);
	if (strcmp(heap_token, shm_token) != 0)
		wl_fail("token in the heap is %s but in the shared anonymous page it is %s", heap_token, shm_token);
	wl_pass_note("count=%llu token=%s", (unsigned long long)counter, heap_token);
	return wl_finish();
}
