/* manyfds [N [BASE]] DIR: a process holding N fds (default 3000) and many
 * file mappings whose fds are closed. With BASE, its fds start there
 * instead of at 3 (and the table has a hole below them), near the open-file
 * limit when BASE is.
 *
 * fds 3 .. 3+N-1, by (fd - 3) % 6 (a dense table, as a busy server's):
 *   0  a regular file DIR/f-K (K of 200 files, 8 KiB each, every byte known),
 *      opened read-write at an offset of its own
 *   1  the read end of a pipe holding 8 bytes (its fd number), written
 *      through the next fd
 *   2  that pipe's write end
 *   3  one end of a unix stream socketpair; 8 bytes (its fd number) wait in
 *      it, sent from the next fd
 *   4  the other end
 *   5  /dev/null, read-only or write-only by turn
 * Every 25th regular file's fd is also duplicated right above the range, at
 * 3+N, 3+N+1, ... (the same description: a shared offset).
 * DIR/m-K (K < 120), 3 pages each, are mapped and their fds closed: even K
 * shared read-write (the first byte written), odd K private (the first page
 * written, copied on write).
 *
 * On SIGTERM: every fd is checked for kind and identity (inode of the file,
 * device number of /dev/null, access mode), the files' offsets and the bytes
 * there, the pipes' and sockets' pending data and that their two ends are
 * still connected (a round trip through each), the duplicates' shared
 * offsets, every mapping's bytes, and that a write through a shared mapping
 * reaches its file. */
#include "wl.h"

#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/sysmacros.h>

static int BASE = 3;
#define FILES 200
#define FILE_BYTES 8192
#define MAPS 120
#define MAP_BYTES (3 * WL_PAGE)
static int SCAN_TO = 16000;
#define TEMP_FD 12000
#define MAX_N 4000

static ino_t file_ino[FILES];
static off_t offset_of[MAX_N];
static unsigned char *maps[MAPS];
static int n_fds = 3000;

static unsigned char byte_of(int file, size_t at)
{
	return (unsigned char)(file * 31 + at * 7 + (at >> 8));
}

static unsigned char map_byte(int k, size_t at)
{
	return (unsigned char)(k * 13 + at * 3 + 1);
}

static void die(const char *what, int fd)
{
	dprintf(2, "%s (fd %d): %s\n", what, fd, strerror(errno));
	exit(2);
}

static void place(int fd, int want)
{
	if (fd != want) {
		if (dup2(fd, want) != want)
			die("dup2", want);
		close(fd);
	}
}

static void make_file(const char *name, size_t len, unsigned char (*fn)(int, size_t), int k)
{
	char path[4096];
	static unsigned char buf[FILE_BYTES > MAP_BYTES ? FILE_BYTES : MAP_BYTES];
	wl_path(path, sizeof(path), name);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	for (size_t i = 0; i < len; i++)
		buf[i] = fn(k, i);
	if (fd < 0 || write(fd, buf, len) != (ssize_t)len || close(fd) != 0)
		die(name, fd);
}

static void check_regular(int fd)
{
	int i = fd - BASE, k = (i / 6) % FILES;
	struct stat st;
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_ino != file_ino[k]) {
		wl_fail("fd %d is not DIR/f-%d", fd, k);
		return;
	}
	if ((fcntl(fd, F_GETFL) & O_ACCMODE) != O_RDWR)
		wl_fail("fd %d: not read-write", fd);
	off_t pos = lseek(fd, 0, SEEK_CUR);
	if (pos != offset_of[i]) {
		wl_fail("fd %d: offset %lld, expected %lld", fd, (long long)pos, (long long)offset_of[i]);
		return;
	}
	unsigned char b[4];
	if (read(fd, b, 4) != 4) {
		wl_fail("fd %d: cannot read at %lld", fd, (long long)pos);
		return;
	}
	for (int j = 0; j < 4; j++)
		if (b[j] != byte_of(k, (size_t)pos + j)) {
			wl_fail("fd %d: wrong byte at %lld", fd, (long long)pos + j);
			return;
		}
	if (i % 150 == 0) {
		/* The duplicate shares the description: it sees the read's offset. */
		int d = BASE + n_fds + i / 150;
		off_t dp = lseek(d, 0, SEEK_CUR);
		if (dp != pos + 4)
			wl_fail("fd %d (dup of %d): offset %lld, expected %lld", d, fd, (long long)dp,
				(long long)pos + 4);
	}
}

static void check_pair(int a, int b, int sock)
{
	struct stat st;
	if (fstat(a, &st) != 0 || (sock ? !S_ISSOCK(st.st_mode) : !S_ISFIFO(st.st_mode))) {
		wl_fail("fd %d is not a %s", a, sock ? "socket" : "pipe");
		return;
	}
	long long got = -1, want = a;
	if (fcntl(a, F_SETFL, O_NONBLOCK) != 0 || read(a, &got, 8) != 8 || got != want) {
		wl_fail("fd %d: pending data %lld, expected %lld", a, got, want);
		return;
	}
	/* Still connected to its peer: a round trip. */
	long long t = 0x5a5a0000LL + b;
	got = -1;
	if (write(b, &t, 8) != 8 || read(a, &got, 8) != 8 || got != t)
		wl_fail("fds %d and %d are no longer connected", a, b);
	if (sock) {
		got = -1;
		if (write(a, &t, 8) != 8 || read(b, &got, 8) != 8 || got != t)
			wl_fail("socket fds %d -> %d are no longer connected", a, b);
	}
}

static void check_null(int fd)
{
	int i = fd - BASE;
	struct stat st;
	int acc = (i / 6) % 2 ? O_WRONLY : O_RDONLY;
	if (fstat(fd, &st) != 0 || !S_ISCHR(st.st_mode) || major(st.st_rdev) != 1 || minor(st.st_rdev) != 3)
		wl_fail("fd %d is not /dev/null", fd);
	else if ((fcntl(fd, F_GETFL) & O_ACCMODE) != acc)
		wl_fail("fd %d: /dev/null with the wrong access mode", fd);
}

int main(int argc, char **argv)
{
	int argi = 1;
	if (argc > 2) {
		n_fds = atoi(argv[1]);
		argi = 2;
	}
	if (argc > 3) {
		BASE = atoi(argv[2]);
		argi = 3;
	}
	wl_init(argc, argv, argi);
	if (n_fds < 6 || n_fds > MAX_N)
		return 2;
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
		return 2;
	rl.rlim_cur = rl.rlim_max;
	if (BASE < 3 || rl.rlim_cur < (rlim_t)BASE + (rlim_t)n_fds + 100 || setrlimit(RLIMIT_NOFILE, &rl) != 0) {
		dprintf(2, "RLIMIT_NOFILE hard limit %llu is too low\n", (unsigned long long)rl.rlim_max);
		return 2;
	}
	char name[64], path[4096];
	for (int k = 0; k < FILES; k++) {
		snprintf(name, sizeof(name), "f-%d", k);
		make_file(name, FILE_BYTES, byte_of, k);
	}
	for (int k = 0; k < MAPS; k++) {
		snprintf(name, sizeof(name), "m-%d", k);
		make_file(name, MAP_BYTES, (unsigned char (*)(int, size_t))map_byte, k);
		wl_path(path, sizeof(path), name);
		int shared = k % 2 == 0;
		int fd = open(path, shared ? O_RDWR : O_RDONLY);
		if (fd < 0)
			die(name, fd);
		maps[k] = mmap(NULL, MAP_BYTES, PROT_READ | PROT_WRITE, shared ? MAP_SHARED : MAP_PRIVATE, fd, 0);
		if (maps[k] == MAP_FAILED)
			die("mmap", fd);
		close(fd);
		if (shared)
			maps[k][0] = 0xee;
		else
			memset(maps[k], 0x40 + k % 64, WL_PAGE);
	}
	for (int i = 0; i < n_fds; i++) {
		int fd = BASE + i, kind = i % 6;
		if (kind == 0) {
			int k = (i / 6) % FILES;
			snprintf(name, sizeof(name), "f-%d", k);
			wl_path(path, sizeof(path), name);
			int f = open(path, O_RDWR);
			if (f < 0)
				die(path, f);
			place(f, fd);
			struct stat st;
			fstat(fd, &st);
			file_ino[k] = st.st_ino;
			offset_of[i] = (off_t)((i * 37) % (FILE_BYTES - 64));
			if (lseek(fd, offset_of[i], SEEK_SET) != offset_of[i])
				die("lseek", fd);
			int d = BASE + n_fds + i / 150;
			if (i % 150 == 0 && dup2(fd, d) != d)
				die("dup2", d);
		} else if (kind == 1 && i + 1 < n_fds) {
			int p[2];
			if (pipe(p) != 0)
				die("pipe", fd);
			/* Move above the range first, so that no placement clobbers another. */
			int r = fcntl(p[0], F_DUPFD, TEMP_FD), w = fcntl(p[1], F_DUPFD, TEMP_FD);
			close(p[0]);
			close(p[1]);
			place(r, fd);
			place(w, fd + 1);
			long long t = fd;
			if (write(fd + 1, &t, 8) != 8)
				die("write", fd + 1);
		} else if (kind == 3 && i + 1 < n_fds) {
			int s[2];
			if (socketpair(AF_UNIX, SOCK_STREAM, 0, s) != 0)
				die("socketpair", fd);
			int a = fcntl(s[0], F_DUPFD, TEMP_FD), b = fcntl(s[1], F_DUPFD, TEMP_FD);
			close(s[0]);
			close(s[1]);
			place(a, fd);
			place(b, fd + 1);
			long long t = fd;
			if (write(fd + 1, &t, 8) != 8)
				die("write", fd + 1);
		} else if (kind == 5) {
			int f = open("/dev/null", (i / 6) % 2 ? O_WRONLY : O_RDONLY);
			if (f < 0)
				die("/dev/null", fd);
			place(f, fd);
		} else if (kind == 1 || kind == 3) {
			/* The last fd of an odd count: /dev/null read-only. */
			int f = open("/dev/null", O_RDONLY);
			place(f, fd);
		}
	}
	wl_write("ready", "%d\n", n_fds);
	wl_wait_term();

	if (wl_corrupt())
		lseek(BASE, 1, SEEK_CUR);
	int checked = 0;
	for (int i = 0; i < n_fds; i++) {
		int fd = BASE + i, kind = i % 6;
		if (kind == 0)
			check_regular(fd);
		else if ((kind == 1 || kind == 3) && i + 1 < n_fds)
			check_pair(fd, fd + 1, kind == 3);
		else if (kind == 5)
			check_null(fd);
		else if (kind == 1 || kind == 3) {
			struct stat st;
			if (fstat(fd, &st) != 0 || !S_ISCHR(st.st_mode))
				wl_fail("fd %d is not /dev/null", fd);
		}
		if (wl_failed())
			break;
		checked++;
	}
	/* Nothing else open in the range, nor above it but the duplicates. */
	int dups = (n_fds + 149) / 150;
	if (BASE + n_fds + 200 > SCAN_TO)
		SCAN_TO = BASE + n_fds + 200;
	if ((rlim_t)SCAN_TO > rl.rlim_cur)
		SCAN_TO = (int)rl.rlim_cur;
	for (int fd = 3; fd < BASE && !wl_failed(); fd++)
		if (fcntl(fd, F_GETFD) >= 0)
			wl_fail("fd %d is open, but was not", fd);
	for (int fd = BASE + n_fds; fd < SCAN_TO; fd++) {
		int dup = fd < BASE + n_fds + dups;
		if ((fcntl(fd, F_GETFD) >= 0) != dup) {
			wl_fail("fd %d is %s", fd, dup ? "missing" : "open, but was not");
			break;
		}
	}
	for (int k = 0; k < MAPS && !wl_failed(); k++) {
		int shared = k % 2 == 0;
		for (size_t at = 0; at < MAP_BYTES; at++) {
			unsigned char want = map_byte(k, at);
			if (shared && at == 0)
				want = 0xee;
			else if (!shared && at < WL_PAGE)
				want = (unsigned char)(0x40 + k % 64);
			if (maps[k][at] != want) {
				wl_fail("mapping of m-%d: byte %zu is %#x, expected %#x", k, at, maps[k][at], want);
				break;
			}
		}
		if (shared) {
			/* A write through the mapping reaches the file. */
			maps[k][1] = 0xab;
			snprintf(name, sizeof(name), "m-%d", k);
			wl_path(path, sizeof(path), name);
			int fd = open(path, O_RDONLY | O_CLOEXEC);
			unsigned char b = 0;
			if (fd < 0 || pread(fd, &b, 1, 1) != 1 || b != 0xab)
				wl_fail("a write through the shared mapping of m-%d does not reach the file", k);
			if (fd >= 0)
				close(fd);
		}
	}
	wl_pass_note("fds=%d maps=%d", checked, MAPS);
	return wl_finish();
}
