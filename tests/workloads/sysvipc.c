/* sysvipc [sysctl] DIR: SysV IPC objects, used by a parent and its child.
 *
 * With sysctl (in a sandbox only: the settings are its IPC namespace's), the
 * namespace's msgmnb is set to 12345 and shmmni to 1000 first, and checked
 * after SIGTERM.
 *
 * The parent makes (a dummy segment made and removed first, so that ids
 * are not simply the first ones):
 *   seg_a  keyed segment, 3 pages, mode 0640, attached by both (inherited);
 *   seg_b  private segment, 2 pages, attached by both, then IPC_RMID: it
 *          lives on while attached (SHM_DEST);
 *   seg_c  keyed segment, 2 pages, written and detached: attached by nobody;
 *   sem    a set of 4 semaphores with values 3, 0, 7, 32767, mode 0600;
 *   msq    a keyed queue with 3 messages of types 5, 2, 9 and sizes 1, 300,
 *          4000 bytes, mode 0620, owner uid 1234, queue size 9000 bytes.
 * It records every id. Ready once the child has written its half of seg_a.
 *
 * After SIGTERM (passed on to the child) both check contents and the parent
 * checks ids, keys, modes, owners, sizes, the number of attaches,
 * semaphore values and the messages (received in order), and that its
 * memory map is as it was; then the two play ping-pong through seg_a and
 * seg_b. The objects are removed at the end (for runs outside a sandbox). */
#include "wl.h"

#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/wait.h>

#define PG WL_PAGE

static int seg_a, seg_b, seg_c, sem, msq;
static key_t key_a, key_c, key_sem, key_msq;
static unsigned char *a, *b;
static const char *role = "parent";
static const unsigned short sem_values[4] = { 3, 0, 7, 32767 };
static const long msg_types[3] = { 5, 2, 9 };
static const size_t msg_sizes[3] = { 1, 300, 4000 };

struct msg {
	long mtype;
	unsigned char text[8192];
};

static int sysctl_mode;

static void set_sysctl(const char *name, long value)
{
	char path[128], text[32];
	snprintf(path, sizeof(path), "/proc/sys/kernel/%s", name);
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	int len = snprintf(text, sizeof(text), "%ld\n", value);
	if (fd < 0 || write(fd, text, (size_t)len) != len) {
		dprintf(2, "%s: %s\n", path, strerror(errno));
		exit(2);
	}
	close(fd);
}

static long get_sysctl(const char *name)
{
	char path[128], text[64];
	snprintf(path, sizeof(path), "/proc/sys/kernel/%s", name);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n = fd < 0 ? -1 : read(fd, text, sizeof(text) - 1);
	if (fd >= 0)
		close(fd);
	text[n > 0 ? n : 0] = 0;
	return n > 0 ? strtol(text, NULL, 10) : -1;
}

static void die(const char *what)
{
	dprintf(2, "%s: %s\n", what, strerror(errno));
	exit(2);
}

static volatile int *token(unsigned char *p)
{
	return (volatile int *)(p + PG - sizeof(int));
}

static int wait_token(volatile int *t, int want)
{
	for (int i = 0; i < 5000; i++) {
		if (__atomic_load_n(t, __ATOMIC_ACQUIRE) == want)
			return 0;
		wl_sleep_ms(1);
	}
	return -1;
}

static void play(int parent)
{
	unsigned char *objs[2] = { a, b };
	for (int i = 0; i < 2; i++) {
		volatile int *t = token(objs[i]);
		for (int round = 0; round < 3; round++) {
			int ask = 100 * i + 2 * round + 1;
			if (parent) {
				__atomic_store_n(t, ask, __ATOMIC_RELEASE);
				if (wait_token(t, ask + 1) != 0) {
					wl_fail("the child did not answer token %d through segment %s", ask,
						i ? "b" : "a");
					return;
				}
			} else {
				if (wait_token(t, ask) != 0) {
					wl_fail("child: no token %d from the parent through segment %s", ask,
						i ? "b" : "a");
					return;
				}
				__atomic_store_n(t, ask + 1, __ATOMIC_RELEASE);
			}
		}
	}
}

static void check_contents(void)
{
	wl_expect("segment a, page 1 (parent's)", a + PG, PG, 1);
	wl_expect("segment a, page 2 (child's)", a + 2 * PG, PG, 2);
	wl_expect("segment b, page 1", b + PG, PG, 3);
}

static void expect_perm(const char *what, struct ipc_perm *p, key_t key, unsigned mode, uid_t uid)
{
	if (p->__key != key)
		wl_fail("%s: key %#x, expected %#x", what, p->__key, key);
	if ((p->mode & 0777) != mode)
		wl_fail("%s: mode %o, expected %o", what, p->mode & 0777, mode);
	if (p->uid != uid || p->cuid != 0)
		wl_fail("%s: owner %u (creator %u), expected %u (creator 0)", what, p->uid, p->cuid, uid);
}

static void check_objects(int corrupt)
{
	int ids[5];
	char buf[128] = "";
	if (wl_read("ids", buf, sizeof(buf)) < 0)
		wl_fail("no DIR/ids");
	else if (sscanf(buf, "%d %d %d %d %d", &ids[0], &ids[1], &ids[2], &ids[3], &ids[4]) != 5)
		wl_fail("DIR/ids: %s", buf);
	else if (ids[0] != seg_a || ids[1] != seg_b || ids[2] != seg_c || ids[3] != sem || ids[4] != msq)
		wl_fail("ids changed: %s", buf);
	if (shmget(key_a, 0, 0) != seg_a)
		wl_fail("shmget(key a) gives %d (%s), expected %d", shmget(key_a, 0, 0), strerror(errno), seg_a);
	if (shmget(key_c, 0, 0) != seg_c)
		wl_fail("shmget(key c) gives %d, expected %d", shmget(key_c, 0, 0), seg_c);
	if (semget(key_sem, 0, 0) != sem)
		wl_fail("semget(key) gives %d, expected %d", semget(key_sem, 0, 0), sem);
	if (msgget(key_msq, 0) != msq)
		wl_fail("msgget(key) gives %d, expected %d", msgget(key_msq, 0), msq);

	if (sysctl_mode && (get_sysctl("msgmnb") != 12345 || get_sysctl("shmmni") != 1000))
		wl_fail("namespace settings: msgmnb %ld, shmmni %ld; expected 12345, 1000", get_sysctl("msgmnb"),
			get_sysctl("shmmni"));
	struct shmid_ds ds;
	if (shmctl(seg_a, IPC_STAT, &ds) != 0)
		wl_fail("IPC_STAT of segment a: %s", strerror(errno));
	else {
		expect_perm("segment a", &ds.shm_perm, key_a, 0640, 0);
		if (ds.shm_segsz != 3 * PG || ds.shm_nattch != 2)
			wl_fail("segment a: %zu bytes, %lu attaches; expected %lu, 2", ds.shm_segsz, ds.shm_nattch,
				3 * PG);
	}
	if (shmctl(seg_b, IPC_STAT, &ds) != 0)
		wl_fail("IPC_STAT of segment b: %s", strerror(errno));
	else {
		if (!(ds.shm_perm.mode & SHM_DEST))
			wl_fail("segment b is no longer marked for removal (mode %o)", ds.shm_perm.mode);
		if (ds.shm_nattch != 2)
			wl_fail("segment b: %lu attaches, expected 2", ds.shm_nattch);
	}
	if (shmctl(seg_c, IPC_STAT, &ds) != 0)
		wl_fail("IPC_STAT of segment c: %s", strerror(errno));
	else if (ds.shm_nattch != 0 || ds.shm_segsz != 2 * PG)
		wl_fail("segment c: %lu attaches, %zu bytes", ds.shm_nattch, ds.shm_segsz);
	unsigned char *c = shmat(seg_c, NULL, SHM_RDONLY);
	if (c == (void *)-1)
		wl_fail("attaching segment c: %s", strerror(errno));
	else {
		wl_expect("segment c", c, 2 * PG - 100, 4);
		shmdt(c);
	}

	struct semid_ds sds;
	unsigned short vals[4];
	if (semctl(sem, 0, IPC_STAT, &sds) != 0 || semctl(sem, 0, GETALL, vals) != 0)
		wl_fail("semaphores: %s", strerror(errno));
	else {
		expect_perm("semaphore set", &sds.sem_perm, key_sem, 0600, 0);
		if (corrupt)
			vals[2]++;
		for (int i = 0; i < 4; i++)
			if (vals[i] != sem_values[i])
				wl_fail("semaphore %d is %u, expected %u", i, vals[i], sem_values[i]);
	}

	struct msqid_ds mds;
	if (msgctl(msq, IPC_STAT, &mds) != 0)
		wl_fail("IPC_STAT of the queue: %s", strerror(errno));
	else {
		expect_perm("message queue", &mds.msg_perm, key_msq, 0620, 1234);
		if (mds.msg_qnum != 3 || mds.msg_qbytes != 9000)
			wl_fail("queue: %lu messages, size %lu; expected 3, 9000", mds.msg_qnum, mds.msg_qbytes);
	}
	static struct msg m;
	for (int i = 0; i < 3; i++) {
		ssize_t n = msgrcv(msq, &m, sizeof(m.text), 0, IPC_NOWAIT);
		if (n < 0) {
			wl_fail("message %d: %s", i, strerror(errno));
			break;
		}
		if (m.mtype != msg_types[i] || (size_t)n != msg_sizes[i])
			wl_fail("message %d: type %ld, %zd bytes; expected type %ld, %zu bytes", i, m.mtype, n,
				msg_types[i], msg_sizes[i]);
		else
			wl_expect("message text", m.text, (size_t)n, 50 + (uint32_t)i);
	}
}

static int child_main(int sync_w)
{
	role = "child";
	wl_fill(a + 2 * PG, PG, 2);
	close(sync_w);
	wl_wait_term();
	check_contents();
	play(0);
	return wl_finish_as("verdict-child");
}

int main(int argc, char **argv)
{
	sysctl_mode = argc > 2 && !strcmp(argv[1], "sysctl");
	wl_init(argc, argv, sysctl_mode ? 2 : 1);
	if (sysctl_mode) {
		set_sysctl("msgmnb", 12345);
		set_sysctl("shmmni", 1000);
	}
	key_t base = (key_t)(0x51000000 | ((getpid() & 0xffff) << 4));
	key_a = base + 1;
	key_c = base + 2;
	key_sem = base + 3;
	key_msq = base + 4;
	int dummy = shmget(IPC_PRIVATE, PG, 0600);
	if (dummy < 0 || shmctl(dummy, IPC_RMID, NULL) != 0)
		die("dummy segment");
	seg_a = shmget(key_a, 3 * PG, IPC_CREAT | IPC_EXCL | 0640);
	seg_b = shmget(IPC_PRIVATE, 2 * PG, 0600);
	seg_c = shmget(key_c, 2 * PG, IPC_CREAT | IPC_EXCL | 0600);
	if (seg_a < 0 || seg_b < 0 || seg_c < 0)
		die("shmget");
	a = shmat(seg_a, NULL, 0);
	b = shmat(seg_b, NULL, 0);
	unsigned char *c = shmat(seg_c, NULL, 0);
	if (a == (void *)-1 || b == (void *)-1 || c == (void *)-1)
		die("shmat");
	wl_fill(a + PG, PG, 1);
	wl_fill(b + PG, PG, 3);
	wl_fill(c, 2 * PG - 100, 4);
	shmdt(c);
	if (shmctl(seg_b, IPC_RMID, NULL) != 0)
		die("IPC_RMID of segment b");

	sem = semget(key_sem, 4, IPC_CREAT | IPC_EXCL | 0600);
	if (sem < 0 || semctl(sem, 0, SETALL, sem_values) != 0)
		die("semaphores");
	msq = msgget(key_msq, IPC_CREAT | IPC_EXCL | 0620);
	if (msq < 0)
		die("msgget");
	static struct msg m;
	for (int i = 0; i < 3; i++) {
		m.mtype = msg_types[i];
		wl_fill(m.text, msg_sizes[i], 50 + (uint32_t)i);
		if (msgsnd(msq, &m, msg_sizes[i], IPC_NOWAIT) != 0)
			die("msgsnd");
	}
	struct msqid_ds mds;
	if (msgctl(msq, IPC_STAT, &mds) != 0)
		die("msgctl");
	mds.msg_perm.uid = 1234;
	mds.msg_qbytes = 9000;
	if (msgctl(msq, IPC_SET, &mds) != 0)
		die("msgctl(IPC_SET)");
	wl_write("ids", "%d %d %d %d %d\n", seg_a, seg_b, seg_c, sem, msq);

	int sync[2];
	if (pipe(sync) != 0)
		return 2;
	pid_t kid = fork();
	if (kid < 0)
		return 2;
	if (kid == 0) {
		close(sync[0]);
		exit(child_main(sync[1]));
	}
	close(sync[1]);
	char ch;
	while (read(sync[0], &ch, 1) > 0)
		;
	close(sync[0]);
	static struct wl_map before[WL_MAPS_MAX], after[WL_MAPS_MAX];
	int nbefore = wl_maps_read(before, WL_MAPS_MAX);
	wl_write("ready", "%d\n", (int)kid);

	wl_wait_term();

	if (kill(kid, SIGTERM) != 0)
		wl_fail("cannot pass SIGTERM to the child: %s", strerror(errno));
	int nafter = wl_maps_read(after, WL_MAPS_MAX);
	wl_maps_expect_same(before, nbefore, after, nafter);
	check_contents();
	check_objects(wl_corrupt());
	play(1);

	int status = 0;
	if (waitpid(kid, &status, 0) != kid)
		wl_fail("waitpid(child): %s", strerror(errno));
	char verdict[600];
	if (wl_read("verdict-child", verdict, sizeof(verdict)) < 0)
		wl_fail("the child wrote no verdict; wait status %#x", status);
	else if (strcmp(verdict, "PASS") != 0)
		wl_fail("%s", verdict + (strncmp(verdict, "FAIL: ", 6) ? 0 : 6));
	shmdt(a);
	shmdt(b);
	shmctl(seg_a, IPC_RMID, NULL);
	shmctl(seg_c, IPC_RMID, NULL);
	semctl(sem, 0, IPC_RMID);
	msgctl(msq, IPC_RMID, NULL);
	return wl_finish();
}
