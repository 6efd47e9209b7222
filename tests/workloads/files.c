/* files DIR: open files at fixed fd numbers.
 *
 *   fd 10  DIR/data.dat, read-only, read up to byte 3000 of 8192
 *   fd 11  DIR/app.log, O_APPEND, 10 lines written
 *   fd 12  DIR/deleted.dat, read-write, 10000 bytes, unlinked, offset 4321
 *   fd 13  /dev/null, write-only, close-on-exec
 *   fd 14  /dev/zero, read-only
 *   fd 15  DIR itself (O_DIRECTORY)
 *
 * On SIGTERM: the offsets (checked by reading the next bytes), the flags,
 * the contents, an append landing at the file's real end after the file was
 * grown through another fd, the deleted file's contents and link count, and
 * the devices are checked. */
#include "wl.h"

#include <sys/sysmacros.h>

#define DATA_BYTES 8192
#define DATA_POS 3000
#define DEL_BYTES 10000
#define DEL_POS 4321

static unsigned char buf[DATA_BYTES + DEL_BYTES];
static char app_text[4096];
static size_t app_len;

static void at(int fd, const char *path, int flags, mode_t mode)
{
	int f = open(path, flags, mode);
	if (f < 0 || dup2(f, fd) != fd) {
		perror(path);
		exit(2);
	}
	close(f);
}

static void expect_fd_flags(int fd, int acc, int append, int cloexec)
{
	int fl = fcntl(fd, F_GETFL), fdfl = fcntl(fd, F_GETFD);
	if (fl < 0 || fdfl < 0) {
		wl_fail("fd %d is not open: %s", fd, strerror(errno));
		return;
	}
	if ((fl & O_ACCMODE) != acc)
		wl_fail("fd %d: access mode %d, expected %d", fd, fl & O_ACCMODE, acc);
	if (!!(fl & O_APPEND) != append)
		wl_fail("fd %d: O_APPEND is %s, expected %s", fd, fl & O_APPEND ? "set" : "clear",
			append ? "set" : "clear");
	if (!!(fdfl & FD_CLOEXEC) != cloexec)
		wl_fail("fd %d: close-on-exec is %s, expected %s", fd, fdfl & FD_CLOEXEC ? "set" : "clear",
			cloexec ? "set" : "clear");
}

static void expect_dev(int fd, const char *name, unsigned maj, unsigned min)
{
	struct stat st;
	if (fstat(fd, &st) != 0 || !S_ISCHR(st.st_mode) || major(st.st_rdev) != maj || minor(st.st_rdev) != min)
		wl_fail("fd %d is not %s (char device %u:%u)", fd, name, maj, min);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv, 1);
	char path[4096];

	wl_path(path, sizeof(path), "data.dat");
	at(10, path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	wl_fill(buf, DATA_BYTES, 21);
	if (write(10, buf, DATA_BYTES) != DATA_BYTES)
		return 2;
	at(10, path, O_RDONLY, 0);
	if (read(10, buf, DATA_POS) != DATA_POS)
		return 2;
	struct stat data_st;
	fstat(10, &data_st);

	wl_path(path, sizeof(path), "app.log");
	at(11, path, O_WRONLY | O_APPEND | O_CREAT | O_TRUNC, 0644);
	for (int i = 1; i <= 10; i++) {
		char line[64];
		int n = snprintf(line, sizeof(line), "line %d before the dump\n", i);
		if (write(11, line, (size_t)n) != n)
			return 2;
		memcpy(app_text + app_len, line, (size_t)n);
		app_len += (size_t)n;
	}
	struct stat app_st;
	fstat(11, &app_st);

	wl_path(path, sizeof(path), "deleted.dat");
	at(12, path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	wl_fill(buf, DEL_BYTES, 22);
	if (write(12, buf, DEL_BYTES) != DEL_BYTES || unlink(path) != 0)
		return 2;
	lseek(12, DEL_POS, SEEK_SET);

	at(13, "/dev/null", O_WRONLY | O_CLOEXEC, 0);
	at(14, "/dev/zero", O_RDONLY, 0);
	fcntl(13, F_SETFD, FD_CLOEXEC); /* dup2 drops it */
	at(15, wl_dir, O_RDONLY | O_DIRECTORY, 0);
	struct stat dir_st;
	fstat(15, &dir_st);
	wl_write("ready", "ready\n");

	wl_wait_term();

	if (wl_corrupt())
		lseek(10, 1, SEEK_CUR);

	/* fd 10: the file read to the middle. */
	expect_fd_flags(10, O_RDONLY, 0, 0);
	struct stat st;
	if (fstat(10, &st) == 0 && (st.st_ino != data_st.st_ino || st.st_dev != data_st.st_dev))
		wl_fail("fd 10 is not data.dat any more (inode %lu, was %lu)", (unsigned long)st.st_ino,
			(unsigned long)data_st.st_ino);
	off_t pos = lseek(10, 0, SEEK_CUR);
	if (pos != DATA_POS)
		wl_fail("fd 10: offset is %lld, expected %d", (long long)pos, DATA_POS);
	unsigned char next[100], want[DATA_POS + 100];
	wl_fill(want, sizeof(want), 21);
	if (read(10, next, sizeof(next)) != (ssize_t)sizeof(next) || memcmp(next, want + DATA_POS, sizeof(next)))
		wl_fail("fd 10: the next 100 bytes read are not bytes %d..%d of data.dat", DATA_POS, DATA_POS + 100);

	/* fd 11: the O_APPEND log. */
	expect_fd_flags(11, O_WRONLY, 1, 0);
	if (fstat(11, &st) == 0 && (st.st_ino != app_st.st_ino || (size_t)st.st_size != app_len))
		wl_fail("fd 11: inode %lu size %lld, expected app.log (inode %lu) of %zu bytes",
			(unsigned long)st.st_ino, (long long)st.st_size, (unsigned long)app_st.st_ino, app_len);
	wl_path(path, sizeof(path), "app.log");
	int other = open(path, O_RDWR | O_CLOEXEC);
	const char *grow = "grown through another fd\n", *after = "appended after the dump\n";
	if (other < 0 || pwrite(other, grow, strlen(grow), (off_t)app_len) != (ssize_t)strlen(grow))
		wl_fail("cannot grow app.log through another fd: %s", strerror(errno));
	if (write(11, after, strlen(after)) != (ssize_t)strlen(after))
		wl_fail("fd 11: append failed: %s", strerror(errno));
	memcpy(app_text + app_len, grow, strlen(grow));
	memcpy(app_text + app_len + strlen(grow), after, strlen(after));
	size_t total = app_len + strlen(grow) + strlen(after);
	static char got[8192];
	ssize_t n = other < 0 ? -1 : pread(other, got, sizeof(got), 0);
	if (n != (ssize_t)total || memcmp(got, app_text, total))
		wl_fail("app.log holds %zd bytes, expected %zu: the append through fd 11 did not land at the end",
			n, total);
	if (other >= 0)
		close(other);

	/* fd 12: the deleted file. */
	expect_fd_flags(12, O_RDWR, 0, 0);
	if (fstat(12, &st) != 0 || st.st_nlink != 0 || st.st_size != DEL_BYTES)
		wl_fail("fd 12: link count %lu size %lld, expected a deleted file (0 links) of %d bytes",
			(unsigned long)st.st_nlink, (long long)st.st_size, DEL_BYTES);
	pos = lseek(12, 0, SEEK_CUR);
	if (pos != DEL_POS)
		wl_fail("fd 12: offset is %lld, expected %d", (long long)pos, DEL_POS);
	if (pread(12, buf, DEL_BYTES, 0) != DEL_BYTES)
		wl_fail("fd 12: cannot read the deleted file's %d bytes", DEL_BYTES);
	else
		wl_expect("deleted file", buf, DEL_BYTES, 22);
	char link[4096];
	ssize_t ll = readlink("/proc/self/fd/12", link, sizeof(link) - 1);
	link[ll > 0 ? ll : 0] = 0;
	if (ll < 10 || strcmp(link + ll - 10, " (deleted)") != 0)
		wl_fail("fd 12: /proc/self/fd/12 is %s, expected a name ending in (deleted)", link);

	/* fd 13, 14: devices. */
	expect_fd_flags(13, O_WRONLY, 0, 1);
	expect_dev(13, "/dev/null", 1, 3);
	if (write(13, buf, 1000) != 1000)
		wl_fail("fd 13: writing to /dev/null failed");
	expect_fd_flags(14, O_RDONLY, 0, 0);
	expect_dev(14, "/dev/zero", 1, 5);
	memset(next, 0x55, sizeof(next));
	if (read(14, next, sizeof(next)) != (ssize_t)sizeof(next))
		wl_fail("fd 14: reading /dev/zero failed");
	for (size_t i = 0; i < sizeof(next); i++)
		if (next[i]) {
			wl_fail("fd 14: /dev/zero gave a non-zero byte");
			break;
		}

	/* fd 15: the directory. */
	if (fstat(15, &st) != 0 || !S_ISDIR(st.st_mode) || st.st_ino != dir_st.st_ino)
		wl_fail("fd 15 is not the workload directory any more");
	else if (faccessat(15, "data.dat", R_OK, 0) != 0)
		wl_fail("fd 15: data.dat not found relative to the directory fd");
	return wl_finish();
}
