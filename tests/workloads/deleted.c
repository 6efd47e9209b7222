/* deleted MODE DIR: files that have no name any more, held by fds and
 * mappings.
 *
 * tmpfile: files made with O_TMPFILE, as a database keeps them.
 *   fd 10  O_TMPFILE in /tmp (the sandbox's tmpfs), read-write, 50000 bytes,
 *          offset 1234
 *   fd 11  O_TMPFILE in DIR (the host's disk), write-only with O_APPEND,
 *          3000 bytes, offset 2500
 *   fd 12  a second description of fd 10's file (through /proc/self/fd),
 *          read-only, offset 777
 *   After SIGTERM: contents, offsets, flags, no link; fds 10 and 12 are one
 *   file; then each file is given a name with linkat through
 *   /proc/self/fd and the name shows the contents.
 *
 * ghost: files deleted while open or mapped.
 *   fd 10  DIR/sparse: 64 MiB with data only at [0, 4 KiB), [1 MiB, 1 MiB +
 *          8 KiB) and its last byte, read-write, offset 5000
 *   fd 11  a second description of it, read-only
 *   fd 12  /tmp/shared-PID (tmpfs), 3 MiB, read-write, also mapped shared
 *   fd 13  DIR/big: 40 MiB of data, read-only, offset 33 MiB
 *   DIR/mapped, 4 pages, mapped private (its first page written) and shared
 *   (its last page written), its fd closed.
 *   After SIGTERM: contents, offsets, the holes (SEEK_DATA/SEEK_HOLE give
 *   what they gave before), the fds on one file share it, writes through
 *   the shared mappings reach the files and back, and linkat of a deleted
 *   file still fails as it did.
 *
 * dirs: directories and a FIFO deleted while in use.
 *   cwd    DIR/gone-cwd, removed
 *   fd 10  DIR/gone-dir, open O_RDONLY|O_DIRECTORY, removed
 *   fd 11  DIR/gone-fifo, open read-write, holding "hello", removed
 *   fd 12  the same FIFO read-only and non-blocking, fd 13 write-only
 *   fd 14  DIR/gone-zero, a device node for /dev/zero, open read-only,
 *          removed
 *   After SIGTERM: the cwd and fd 10 are removed directories with their old
 *   names (/proc/self/cwd, /proc/self/fd/10), nothing can be made in the
 *   cwd, reading fd 10's entries fails as before; the FIFO still holds
 *   "hello" and its three fds are one FIFO; fd 14 is a removed node of
 *   /dev/zero under its old name and reads zeros. */
#include "wl.h"

#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>

#define MIB (1024UL * 1024)

static unsigned char pat(unsigned seed, size_t at)
{
	return (unsigned char)(seed * 17 + at * 5 + (at >> 12));
}

static void fill_at(int fd, unsigned seed, off_t from, size_t len)
{
	static unsigned char buf[1 << 16];
	size_t done = 0;
	while (done < len) {
		size_t n = len - done < sizeof(buf) ? len - done : sizeof(buf);
		for (size_t i = 0; i < n; i++)
			buf[i] = pat(seed, (size_t)from + done + i);
		if (pwrite(fd, buf, n, from + (off_t)done) != (ssize_t)n) {
			perror("pwrite");
			exit(2);
		}
		done += n;
	}
}

/* Whether [from, from+len) of fd holds the pattern. */
static int holds(int fd, unsigned seed, off_t from, size_t len)
{
	static unsigned char buf[1 << 16];
	size_t done = 0;
	while (done < len) {
		size_t n = len - done < sizeof(buf) ? len - done : sizeof(buf);
		if (pread(fd, buf, n, from + (off_t)done) != (ssize_t)n)
			return 0;
		for (size_t i = 0; i < n; i++)
			if (buf[i] != pat(seed, (size_t)from + done + i))
				return 0;
		done += n;
	}
	return 1;
}

static void at_fd(int fd, int want)
{
	if (fd < 0) {
		perror("open");
		exit(2);
	}
	if (fd != want) {
		if (dup2(fd, want) != want) {
			perror("dup2");
			exit(2);
		}
		close(fd);
	}
}

static void expect_flags(int fd, int acc, int append)
{
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0)
		wl_fail("fd %d is not open", fd);
	else if ((fl & O_ACCMODE) != acc || !!(fl & O_APPEND) != append)
		wl_fail("fd %d: flags %#x", fd, fl);
}

static void expect_unlinked(int fd)
{
	struct stat st;
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_nlink != 0)
		wl_fail("fd %d: not an unlinked regular file (links %lu)", fd, (unsigned long)st.st_nlink);
}

static void expect_pos(int fd, off_t want)
{
	off_t pos = lseek(fd, 0, SEEK_CUR);
	if (pos != want)
		wl_fail("fd %d: offset %lld, expected %lld", fd, (long long)pos, (long long)want);
}

static int same_file(int a, int b)
{
	struct stat x, y;
	return fstat(a, &x) == 0 && fstat(b, &y) == 0 && x.st_dev == y.st_dev && x.st_ino == y.st_ino;
}

/* Gives fd's file the name `path` through /proc/self/fd. */
static int link_fd(int fd, const char *path)
{
	char proc[64];
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
	return linkat(AT_FDCWD, proc, AT_FDCWD, path, AT_SYMLINK_FOLLOW);
}

static void expect_link(const char *proc, const char *want);

static int tmpfile_mode(void)
{
	char path[4096];
	at_fd(open("/tmp", O_TMPFILE | O_RDWR, 0640), 10);
	fill_at(10, 1, 0, 50000);
	lseek(10, 1234, SEEK_SET);
	at_fd(open(wl_dir, O_TMPFILE | O_WRONLY, 0600), 11);
	fill_at(11, 2, 0, 3000);
	int fl = fcntl(11, F_GETFL);
	fcntl(11, F_SETFL, fl | O_APPEND);
	lseek(11, 2500, SEEK_SET);
	at_fd(open("/proc/self/fd/10", O_RDONLY), 12);
	lseek(12, 777, SEEK_SET);
	wl_write("ready", "ready\n");
	wl_wait_term();

	if (wl_corrupt())
		lseek(12, 1, SEEK_CUR);
	expect_flags(10, O_RDWR, 0);
	expect_flags(11, O_WRONLY, 1);
	expect_flags(12, O_RDONLY, 0);
	for (int fd = 10; fd <= 12; fd++)
		expect_unlinked(fd);
	expect_pos(10, 1234);
	expect_pos(11, 2500);
	expect_pos(12, 777);
	if (!holds(10, 1, 0, 50000))
		wl_fail("the /tmp O_TMPFILE file's contents changed");
	if (!same_file(10, 12))
		wl_fail("fds 10 and 12 are no longer one file");
	/* An append lands at the end. */
	if (write(11, "!", 1) != 1 || lseek(11, 0, SEEK_CUR) != 3001)
		wl_fail("append through fd 11");
	/* Names for them, as a database gives its finished files. */
	wl_path(path, sizeof(path), "linked");
	if (link_fd(11, path) != 0) {
		wl_fail("linkat of the O_TMPFILE file in DIR: %s", strerror(errno));
	} else {
		int f = open(path, O_RDONLY | O_CLOEXEC);
		char c = 0;
		if (f < 0 || !holds(f, 2, 0, 3000) || pread(f, &c, 1, 3000) != 1 || c != '!')
			wl_fail("DIR/linked does not hold the O_TMPFILE file's contents");
		if (f >= 0)
			close(f);
	}
	char tmp[64];
	snprintf(tmp, sizeof(tmp), "/tmp/linked-%d", getpid());
	if (link_fd(10, tmp) != 0) {
		wl_fail("linkat of the O_TMPFILE file in /tmp: %s", strerror(errno));
	} else {
		int f = open(tmp, O_RDONLY | O_CLOEXEC);
		struct stat st;
		if (f < 0 || !holds(f, 1, 0, 50000) || !same_file(f, 12) || fstat(10, &st) != 0 || st.st_nlink != 1)
			wl_fail("/tmp/linked is not the O_TMPFILE file");
		if (f >= 0)
			close(f);
		unlink(tmp);
	}
	return wl_finish();
}

#define SPARSE (64 * MIB)
#define BIG (40 * MIB)
#define MAPPED (4 * WL_PAGE)

/* The data and hole boundaries of fd, up to 16 of them. */
static int layout(int fd, off_t *out)
{
	int n = 0;
	off_t at = 0;
	while (n < 16) {
		off_t d = lseek(fd, at, SEEK_DATA);
		if (d < 0)
			break;
		off_t h = lseek(fd, d, SEEK_HOLE);
		out[n++] = d;
		out[n++] = h;
		at = h;
	}
	return n;
}

static int ghost_mode(void)
{
	char path[4096];
	static off_t before[16], after[16];

	wl_path(path, sizeof(path), "sparse");
	at_fd(open(path, O_RDWR | O_CREAT | O_TRUNC, 0640), 10);
	if (ftruncate(10, SPARSE) != 0)
		return 2;
	fill_at(10, 3, 0, 4096);
	fill_at(10, 3, MIB, 8192);
	fill_at(10, 3, SPARSE - 1, 1);
	at_fd(open(path, O_RDONLY), 11);
	unlink(path);
	int nb = layout(10, before);
	lseek(10, 5000, SEEK_SET);

	char shared[64];
	snprintf(shared, sizeof(shared), "/tmp/shared-%d", getpid());
	at_fd(open(shared, O_RDWR | O_CREAT | O_TRUNC, 0600), 12);
	fill_at(12, 4, 0, 3 * MIB);
	unsigned char *sh = mmap(NULL, 3 * MIB, PROT_READ | PROT_WRITE, MAP_SHARED, 12, 0);
	if (sh == MAP_FAILED)
		return 2;
	unlink(shared);

	wl_path(path, sizeof(path), "big");
	at_fd(open(path, O_RDWR | O_CREAT | O_TRUNC, 0600), 13);
	fill_at(13, 5, 0, BIG);
	at_fd(open(path, O_RDONLY), 13);
	lseek(13, 33 * MIB, SEEK_SET);
	unlink(path);

	wl_path(path, sizeof(path), "mapped");
	int m = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	fill_at(m, 6, 0, MAPPED);
	unsigned char *priv = mmap(NULL, MAPPED, PROT_READ | PROT_WRITE, MAP_PRIVATE, m, 0);
	unsigned char *shm = mmap(NULL, MAPPED, PROT_READ | PROT_WRITE, MAP_SHARED, m, 0);
	if (priv == MAP_FAILED || shm == MAP_FAILED)
		return 2;
	close(m);
	unlink(path);
	memset(priv, 0x11, WL_PAGE);
	memset(shm + 3 * WL_PAGE, 0x22, WL_PAGE);

	wl_write("ready", "ready\n");
	wl_wait_term();

	if (wl_corrupt())
		priv[5] ^= 1;
	for (int fd = 10; fd <= 13; fd++)
		expect_unlinked(fd);
	expect_flags(10, O_RDWR, 0);
	expect_flags(11, O_RDONLY, 0);
	expect_pos(10, 5000);
	expect_pos(11, 0);
	wl_path(path, sizeof(path), "sparse (deleted)");
	expect_link("/proc/self/fd/10", path);
	expect_pos(13, 33 * MIB);
	struct stat st;
	if (fstat(10, &st) != 0 || st.st_size != (off_t)SPARSE)
		wl_fail("the sparse file's size changed");
	if (!holds(10, 3, 0, 4096) || !holds(10, 3, MIB, 8192) || !holds(10, 3, SPARSE - 1, 1))
		wl_fail("the sparse file's data changed");
	int na = layout(10, after);
	if (na != nb || memcmp(before, after, sizeof(off_t) * (size_t)nb) != 0)
		wl_fail("the sparse file's holes changed (%d boundaries, were %d; first data %lld-%lld)", na, nb,
			(long long)after[0], (long long)after[1]);
	if ((unsigned long)st.st_blocks * 512 > 4 * MIB)
		wl_fail("the sparse file takes %lld bytes of disk", (long long)st.st_blocks * 512);
	if (!same_file(10, 11))
		wl_fail("fds 10 and 11 are no longer one file");
	if (pwrite(10, "xyz", 3, 100) != 3) {
		wl_fail("write through fd 10");
	} else {
		char b[3] = {0};
		if (pread(11, b, 3, 100) != 3 || memcmp(b, "xyz", 3) != 0)
			wl_fail("a write through fd 10 is not seen through fd 11");
	}
	for (size_t i = 0; i < 3 * MIB; i += 4093)
		if (sh[i] != pat(4, i)) {
			wl_fail("the shared mapping of the deleted /tmp file: byte %zu", i);
			break;
		}
	sh[10] = 0x99;
	unsigned char c = 0;
	if (pread(12, &c, 1, 10) != 1 || c != 0x99)
		wl_fail("a write through the shared mapping is not seen through fd 12");
	if (pwrite(12, "Q", 1, 20) != 1 || sh[20] != 'Q')
		wl_fail("a write through fd 12 is not seen in the shared mapping");
	if (!holds(13, 5, 0, BIG))
		wl_fail("the 40 MiB deleted file's contents changed");
	for (size_t i = 0; i < MAPPED; i++) {
		/* The pages never written in the private mapping show the file. */
		unsigned char want = i < WL_PAGE ? 0x11 : i >= 3 * WL_PAGE ? 0x22 : pat(6, i);
		if (priv[i] != want) {
			wl_fail("private mapping of deleted DIR/mapped: byte %zu is %#x, expected %#x", i, priv[i], want);
			break;
		}
		want = i >= 3 * WL_PAGE ? 0x22 : pat(6, i);
		if (shm[i] != want) {
			wl_fail("shared mapping of deleted DIR/mapped: byte %zu is %#x, expected %#x", i, shm[i], want);
			break;
		}
	}
	/* Both mappings are of one file: a write through the shared one shows
	 * in the private one's pages that were never written. */
	shm[WL_PAGE + 7] = 0x77;
	if (priv[WL_PAGE + 7] != 0x77)
		wl_fail("the private and shared mappings of DIR/mapped are not of one file");
	/* A deleted file cannot be given a name again, restored or not. */
	wl_path(path, sizeof(path), "relinked");
	if (link_fd(10, path) == 0 || errno != ENOENT)
		wl_fail("linkat of a deleted file: %s", errno ? strerror(errno) : "it worked");
	return wl_finish();
}

static void expect_link(const char *proc, const char *want)
{
	char got[4096];
	ssize_t n = readlink(proc, got, sizeof(got) - 1);
	got[n < 0 ? 0 : n] = 0;
	if (strcmp(got, want) != 0)
		wl_fail("%s is \"%s\", expected \"%s\"", proc, got, want);
}

static int dirs_mode(void)
{
	char path[4096], want[4200], fifo[4096];
	wl_path(path, sizeof(path), "gone-cwd");
	if (mkdir(path, 0750) != 0 || chdir(path) != 0 || rmdir(path) != 0)
		return 2;
	char cwd_link[4200];
	snprintf(cwd_link, sizeof(cwd_link), "%s (deleted)", path);
	wl_path(path, sizeof(path), "gone-dir");
	if (mkdir(path, 0700) != 0)
		return 2;
	at_fd(open(path, O_RDONLY | O_DIRECTORY), 10);
	rmdir(path);
	snprintf(want, sizeof(want), "%s (deleted)", path);
	char buf[256];
	long before = syscall(SYS_getdents64, 10, buf, sizeof(buf));
	int before_errno = before < 0 ? errno : 0;

	wl_path(fifo, sizeof(fifo), "gone-fifo");
	if (mkfifo(fifo, 0600) != 0)
		return 2;
	at_fd(open(fifo, O_RDWR), 11);
	at_fd(open(fifo, O_RDONLY | O_NONBLOCK), 12);
	at_fd(open(fifo, O_WRONLY), 13);
	if (write(13, "hello", 5) != 5)
		return 2;
	unlink(fifo);
	char node[4096], node_link[4200];
	wl_path(node, sizeof(node), "gone-zero");
	if (mknod(node, S_IFCHR | 0640, makedev(1, 5)) != 0)
		return 2;
	at_fd(open(node, O_RDONLY), 14);
	unlink(node);
	snprintf(node_link, sizeof(node_link), "%s (deleted)", node);
	wl_write("ready", "ready\n");
	wl_wait_term();

	if (wl_corrupt())
		fchdir(10);
	struct stat st;
	if (stat(".", &st) != 0 || !S_ISDIR(st.st_mode) || st.st_nlink != 0)
		wl_fail("the cwd is not a removed directory");
	expect_link("/proc/self/cwd", cwd_link);
	if (open("new-file", O_WRONLY | O_CREAT | O_CLOEXEC, 0600) >= 0 || errno != ENOENT)
		wl_fail("a file could be made in the removed cwd");
	if (fstat(10, &st) != 0 || !S_ISDIR(st.st_mode) || st.st_nlink != 0)
		wl_fail("fd 10 is not a removed directory");
	expect_link("/proc/self/fd/10", want);
	long after = syscall(SYS_getdents64, 10, buf, sizeof(buf));
	if (after != before || (after < 0 && errno != before_errno))
		wl_fail("reading fd 10's entries gives %ld (errno %d), gave %ld (errno %d)", after, errno, before,
			before_errno);
	for (int fd = 11; fd <= 13; fd++)
		if (fstat(fd, &st) != 0 || !S_ISFIFO(st.st_mode) || st.st_nlink != 0)
			wl_fail("fd %d is not a removed FIFO", fd);
	expect_flags(12, O_RDONLY, 0);
	expect_flags(13, O_WRONLY, 0);
	char got[16] = {0};
	if (read(12, got, sizeof(got)) != 5 || memcmp(got, "hello", 5) != 0)
		wl_fail("the removed FIFO lost its data: \"%s\"", got);
	if (write(13, "abc", 3) != 3 || read(11, got, 3) != 3 || memcmp(got, "abc", 3) != 0)
		wl_fail("fds 11 and 13 are not one FIFO");
	memset(got, 1, sizeof(got));
	if (fstat(14, &st) != 0 || !S_ISCHR(st.st_mode) || st.st_rdev != makedev(1, 5) || st.st_nlink != 0 ||
	    (st.st_mode & 07777) != 0640)
		wl_fail("fd 14 is not the removed node of /dev/zero");
	else if (read(14, got, 8) != 8 || got[0] || got[7])
		wl_fail("fd 14 does not read zeros");
	expect_flags(14, O_RDONLY, 0);
	expect_link("/proc/self/fd/14", node_link);
	return wl_finish();
}

int main(int argc, char **argv)
{
	wl_init(argc, argv, 2);
	if (!strcmp(argv[1], "tmpfile"))
		return tmpfile_mode();
	if (!strcmp(argv[1], "ghost"))
		return ghost_mode();
	if (!strcmp(argv[1], "dirs"))
		return dirs_mode();
	dprintf(2, "unknown mode %s\n", argv[1]);
	return 2;
}
