//! SysV IPC of the sandbox's IPC namespace: shared memory segments (with
//! their contents), semaphore sets (with their values) and message queues
//! (with their messages, in order), each with its key, id, owner and mode,
//! and the namespace's limits (/proc/sys/kernel/shm*, msg*, sem).
//!
//! Dump: stasis enters the sandbox's IPC namespace for a moment (setns) and
//! lists the objects with the *_STAT_ANY commands. A segment's contents are
//! read through a read-only attach of its own (the holes skipped), messages
//! with msgrcv(MSG_COPY), which leaves them queued. The workload's view
//! changes only in a segment's attach/detach times and last PID.
//!
//! Restore: run in the sandbox's init, inside the new IPC namespace, before
//! the tree exists. Each object is created with its id (the namespace's
//! shm_next_id, sem_next_id, msg_next_id, which need /proc in the sandbox),
//! under its creator's uid and gid, then filled and given its owner and mode.
//! Segments marked for removal (SHM_DEST) are removed once init has attached
//! them for the tree (see `memory::shared`). Semaphore undo adjustments
//! (SEM_UNDO) and the last-operation PIDs and times are not restored.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::error::{Error, Result};
use crate::image::{
    Blob, IpcImage, IpcMessage, IpcPerm, MsgQueue, PageSink, SemSet, ShmSegment, PAGE_SIZE,
};

const SHM_STAT_ANY: i32 = 15;
const SHM_INFO: i32 = 14;
const SEM_STAT_ANY: i32 = 20;
const SEM_INFO: i32 = 19;
const MSG_STAT_ANY: i32 = 13;
const MSG_INFO: i32 = 12;
const MSG_COPY: i32 = 0o40000;
pub const SHM_DEST: u32 = 0o1000;
pub const SHM_LOCKED: u32 = 0o2000;

/// Largest segment, semaphore set, queue and message an image may hold.
const MAX_SEGMENT: u64 = 1 << 40;
const MAX_SEMS: usize = 65536;
const MAX_MESSAGE: u64 = 16 << 20;
const MAX_OBJECTS: usize = 1 << 16;

/// The namespace settings carried over, in the order they are written.
const SYSCTLS: &[&str] = &[
    "shmmax",
    "shmall",
    "shmmni",
    "shm_rmid_forced",
    "msgmax",
    "msgmnb",
    "msgmni",
    "sem",
];

fn err(what: impl std::fmt::Display) -> Error {
    Error::Other(format!("SysV IPC: {what}"))
}

fn last(what: impl std::fmt::Display) -> Error {
    err(format!("{what}: {}", std::io::Error::last_os_error()))
}

fn ns_inode(path: &str) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(path)
        .map_err(|e| err(format!("stat {path}: {e}")))?
        .ino())
}

fn perm_of(p: &libc::ipc_perm, id: i32) -> IpcPerm {
    IpcPerm {
        key: p.__key,
        id,
        uid: p.uid,
        gid: p.gid,
        cuid: p.cuid,
        cgid: p.cgid,
        mode: p.mode as u32,
    }
}

/// Moves the calling thread into the IPC namespace of process `pid`. IPC
/// namespaces belong to threads: only a thread made for the purpose calls
/// this, and it ends there, so stasis's own threads never leave their
/// namespace (and nothing has to bring them back).
fn enter_namespace(pid: i32) -> Result<()> {
    let theirs = File::open(format!("/proc/{pid}/ns/ipc"))
        .map_err(|e| err(format!("opening /proc/{pid}/ns/ipc: {e}")))?;
    nix::sched::setns(&theirs, nix::sched::CloneFlags::CLONE_NEWIPC)
        .map_err(|e| err(format!("entering the IPC namespace of process {pid}: {e}")))
}

/// Collects the IPC namespace of the sandbox whose init is `init_pid`;
/// None when the sandbox shares stasis's namespace. Segment contents go to
/// `pages`, message texts to `blobs`.
pub fn collect(
    init_pid: i32,
    pages: &mut PageSink,
    blobs: &mut PageSink,
) -> Result<Option<IpcImage>> {
    if ns_inode(&format!("/proc/{init_pid}/ns/ipc"))? == ns_inode("/proc/self/ns/ipc")? {
        return Ok(None);
    }
    // The thread blocks every signal (it inherits the mask it is started
    // with): the dump's signals go to the thread that waits for them.
    use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow};
    let mut old = SigSet::empty();
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&SigSet::all()), Some(&mut old))
        .map_err(crate::error::errno("blocking signals for the IPC thread"))?;
    let r = std::thread::scope(|sc| {
        let t = std::thread::Builder::new()
            .name("stasis-ipc".into())
            .spawn_scoped(sc, || {
                enter_namespace(init_pid)?;
                collect_inside(pages, blobs)
            });
        let restored = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
        let r = match t {
            Ok(t) => t
                .join()
                .unwrap_or_else(|_| Err(err("the IPC collecting thread panicked"))),
            Err(e) => Err(err(format!("starting the IPC collecting thread: {e}"))),
        };
        restored.map_err(crate::error::errno("restoring the signal mask"))?;
        r
    })?;
    Ok(Some(r))
}

/// The collection proper, run in the sandbox's IPC namespace.
fn collect_inside(pages: &mut PageSink, blobs: &mut PageSink) -> Result<IpcImage> {
    let mut img = IpcImage::default();
    for name in SYSCTLS {
        let path = format!("/proc/sys/kernel/{name}");
        if let Ok(v) = std::fs::read_to_string(&path) {
            img.sysctls.insert(name.to_string(), v.trim().to_string());
        }
    }
    img.shm = collect_shm(pages)?;
    img.sem = collect_sem()?;
    img.msg = collect_msg(blobs, &img.sysctls)?;
    Ok(img)
}

fn collect_shm(pages: &mut PageSink) -> Result<Vec<ShmSegment>> {
    // SAFETY: an all-zero shmid_ds is valid; SHM_INFO writes a smaller struct into it.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: shmctl writes into `ds`, which is large enough for struct shm_info.
    let max = unsafe { libc::shmctl(0, SHM_INFO, &mut ds) };
    if max < 0 {
        return Err(last("shmctl(SHM_INFO)"));
    }
    let mut out = Vec::new();
    for idx in 0..=max {
        // SAFETY: as above.
        let id = unsafe { libc::shmctl(idx, SHM_STAT_ANY, &mut ds) };
        if id < 0 {
            continue; // a free index
        }
        let perm = perm_of(&ds.shm_perm, id);
        let size = ds.shm_segsz as u64;
        if size > MAX_SEGMENT {
            return Err(err(format!("segment {id} has {size} bytes")));
        }
        let runs = save_segment(id, size, pages)?;
        out.push(ShmSegment {
            perm,
            size,
            pages: runs,
        });
    }
    Ok(out)
}

/// Reads a segment's data through an attach of our own.
fn save_segment(id: i32, size: u64, pages: &mut PageSink) -> Result<Vec<crate::image::PageRun>> {
    // SAFETY: a read-only attach wherever the kernel puts it; detached below.
    let at = unsafe { libc::shmat(id, std::ptr::null(), libc::SHM_RDONLY) };
    if at as isize == -1 {
        return Err(last(format!("attaching segment {id} to read it")));
    }
    struct Detach(*mut libc::c_void);
    impl Drop for Detach {
        fn drop(&mut self) {
            // SAFETY: detaching the attach made above.
            unsafe { libc::shmdt(self.0) };
        }
    }
    let _d = Detach(at);
    let len = size.div_ceil(PAGE_SIZE) * PAGE_SIZE;
    let path = format!("/proc/self/map_files/{:x}-{:x}", at as u64, at as u64 + len);
    let f = File::open(&path).map_err(|e| err(format!("segment {id}: opening {path}: {e}")))?;
    crate::memory::shared::save_object(&f, size, pages)
}

fn collect_sem() -> Result<Vec<SemSet>> {
    let mut info = [0i32; 16];
    // SAFETY: SEM_INFO writes a struct seminfo (10 ints) into `info`.
    let max = unsafe { libc::semctl(0, 0, SEM_INFO, info.as_mut_ptr()) };
    if max < 0 {
        return Err(last("semctl(SEM_INFO)"));
    }
    let mut out = Vec::new();
    for idx in 0..=max {
        // SAFETY: an all-zero semid_ds is valid.
        let mut ds: libc::semid_ds = unsafe { std::mem::zeroed() };
        // SAFETY: SEM_STAT_ANY writes a semid_ds.
        let id = unsafe { libc::semctl(idx, 0, SEM_STAT_ANY, &mut ds as *mut libc::semid_ds) };
        if id < 0 {
            continue;
        }
        let n = ds.sem_nsems as usize;
        if n > MAX_SEMS {
            return Err(err(format!("semaphore set {id} has {n} semaphores")));
        }
        let mut values = vec![0u16; n.max(1)];
        // SAFETY: GETALL writes nsems unsigned shorts into `values`.
        if unsafe { libc::semctl(id, 0, libc::GETALL, values.as_mut_ptr()) } < 0 {
            return Err(last(format!("semctl({id}, GETALL)")));
        }
        values.truncate(n);
        out.push(SemSet {
            perm: perm_of(&ds.sem_perm, id),
            values,
        });
    }
    Ok(out)
}

fn collect_msg(blobs: &mut PageSink, sysctls: &BTreeMap<String, String>) -> Result<Vec<MsgQueue>> {
    // SAFETY: an all-zero msqid_ds is valid; MSG_INFO writes a smaller struct msginfo.
    let mut ds: libc::msqid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: msgctl writes into `ds`.
    let max = unsafe { libc::msgctl(0, MSG_INFO, &mut ds) };
    if max < 0 {
        return Err(last("msgctl(MSG_INFO)"));
    }
    let msgmax: u64 = sysctls
        .get("msgmax")
        .and_then(|v| v.parse().ok())
        .unwrap_or(8192);
    let mut out = Vec::new();
    for idx in 0..=max {
        // SAFETY: as above.
        let id = unsafe { libc::msgctl(idx, MSG_STAT_ANY, &mut ds) };
        if id < 0 {
            continue;
        }
        let qbytes = ds.msg_qbytes as u64;
        let cap = msgmax.max(qbytes).clamp(1, MAX_MESSAGE) as usize;
        let mut buf = vec![0u8; 8 + cap];
        let mut messages = Vec::new();
        for i in 0..ds.msg_qnum as i64 {
            // SAFETY: msgrcv writes a long and at most `cap` bytes into `buf`.
            let n = unsafe {
                libc::msgrcv(
                    id,
                    buf.as_mut_ptr().cast(),
                    cap,
                    i,
                    libc::IPC_NOWAIT | MSG_COPY,
                )
            };
            if n < 0 {
                return Err(last(format!("reading message {i} of queue {id}")));
            }
            let mtype = i64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
            let data = Blob {
                offset: blobs.position(),
                len: n as u64,
            };
            blobs.write_all(&buf[8..8 + n as usize])?;
            messages.push(IpcMessage { mtype, data });
        }
        out.push(MsgQueue {
            perm: perm_of(&ds.msg_perm, id),
            qbytes,
            messages,
        });
    }
    Ok(out)
}

/// Checks every count and reference of an IPC image.
pub fn validate(img: &IpcImage, shmem_size: u64, blobs_size: u64) -> Result<()> {
    let bad = |what: String| Error::Other(format!("image: ipc.json: {what}"));
    if img.shm.len() > MAX_OBJECTS || img.sem.len() > MAX_OBJECTS || img.msg.len() > MAX_OBJECTS {
        return Err(bad("too many objects".into()));
    }
    for name in img.sysctls.keys() {
        if !SYSCTLS.contains(&name.as_str()) {
            return Err(bad(format!("unknown setting {name}")));
        }
    }
    let ids_ok = |p: &IpcPerm| p.id >= 0;
    for s in &img.shm {
        if !ids_ok(&s.perm) || s.size == 0 || s.size > MAX_SEGMENT {
            return Err(bad(format!("segment {} of {} bytes", s.perm.id, s.size)));
        }
        let len = s.size.div_ceil(PAGE_SIZE) * PAGE_SIZE;
        for r in &s.pages {
            let ok = r.npages.checked_mul(PAGE_SIZE).is_some_and(|n| {
                r.addr % PAGE_SIZE == 0
                    && r.addr.checked_add(n).is_some_and(|e| e <= len)
                    && r.offset.checked_add(n).is_some_and(|e| e <= shmem_size)
            });
            if !ok {
                return Err(bad(format!(
                    "segment {}: page run at {:#x} lies outside it or shmem.img",
                    s.perm.id, r.addr
                )));
            }
        }
    }
    for s in &img.sem {
        if !ids_ok(&s.perm) || s.values.is_empty() || s.values.len() > MAX_SEMS {
            return Err(bad(format!(
                "semaphore set {} with {} values",
                s.perm.id,
                s.values.len()
            )));
        }
    }
    for q in &img.msg {
        if !ids_ok(&q.perm) || q.messages.len() as u64 > q.qbytes.max(1 << 20) {
            return Err(bad(format!("queue {}", q.perm.id)));
        }
        for m in &q.messages {
            let ok = m.mtype > 0
                && m.data.len <= MAX_MESSAGE
                && m.data
                    .offset
                    .checked_add(m.data.len)
                    .is_some_and(|e| e <= blobs_size);
            if !ok {
                return Err(bad(format!("queue {}: message out of bounds", q.perm.id)));
            }
        }
    }
    Ok(())
}

/// Whether restoring `img` needs anything done.
pub fn is_empty(img: &IpcImage) -> bool {
    img.shm.is_empty() && img.sem.is_empty() && img.msg.is_empty()
}

fn write_sysctl(name: &str, value: &str) -> Result<(), String> {
    let path = format!("/proc/sys/kernel/{name}");
    std::fs::write(&path, value).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            format!("restoring SysV IPC objects needs /proc in the sandbox (profile mounts.proc): {path}: {e}")
        } else {
            format!("writing {value} to {path}: {e}")
        }
    })
}

fn read_sysctl(name: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/sys/kernel/{name}"))
        .ok()
        .map(|s| s.trim().to_string())
}

fn set_egid(gid: u32) -> Result<(), String> {
    // SAFETY: changes this thread's effective gid only; init is single-threaded.
    if unsafe { libc::syscall(libc::SYS_setresgid, -1i32, gid, -1i32) } != 0 {
        return Err(format!(
            "taking gid {gid}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn set_euid(uid: u32) -> Result<(), String> {
    // SAFETY: changes this thread's effective uid only; init is single-threaded.
    if unsafe { libc::syscall(libc::SYS_setresuid, -1i32, uid, -1i32) } != 0 {
        return Err(format!(
            "taking uid {uid}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Runs `f` with the effective uid and gid of an object's creator, so that
/// the kernel records them as its cuid and cgid. Init runs as root: the
/// saved uid stays 0, so it can come back.
fn as_creator<T>(p: &IpcPerm, f: impl FnOnce() -> T) -> Result<T, String> {
    // SAFETY: geteuid and getegid take no arguments.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if p.cuid == euid && p.cgid == egid {
        return Ok(f());
    }
    // The gid first: with a non-root euid it could not be changed.
    set_egid(p.cgid)?;
    if let Err(e) = set_euid(p.cuid) {
        set_egid(egid)?;
        return Err(e);
    }
    let r = f();
    set_euid(euid)?;
    set_egid(egid)?;
    Ok(r)
}

fn set_owner_mode(
    kind: &str,
    p: &IpcPerm,
    set: impl FnOnce(&mut libc::ipc_perm) -> i32,
) -> Result<(), String> {
    // SAFETY: an all-zero ipc_perm is valid.
    let mut perm: libc::ipc_perm = unsafe { std::mem::zeroed() };
    perm.uid = p.uid;
    perm.gid = p.gid;
    perm.mode = (p.mode & 0o777) as u16;
    if set(&mut perm) < 0 {
        return Err(format!(
            "IPC_SET of {kind} {}: {}",
            p.id,
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn check_id(kind: &str, p: &IpcPerm, got: i32) -> Result<(), String> {
    if got < 0 {
        return Err(format!(
            "creating {kind} {} (key {:#x}): {}",
            p.id,
            p.key,
            std::io::Error::last_os_error()
        ));
    }
    if got != p.id {
        return Err(format!("{kind} {} was created with id {got}", p.id));
    }
    Ok(())
}

/// Run in the sandbox's init (inside the new IPC namespace): recreates every
/// object. `shmem` holds segment contents, `blobs` message texts.
pub fn restore(img: &IpcImage, shmem: Option<&File>, blobs: &File) -> Result<(), String> {
    if is_empty(img) {
        for (name, value) in &img.sysctls {
            if read_sysctl(name).as_deref() != Some(value.as_str()) {
                write_sysctl(name, value)?;
            }
        }
        return Ok(());
    }
    // Limits first, but for the message sizes (each queue is created with
    // msgmnb set to its own size, and msgmax raised for its messages) and
    // shm_rmid_forced (it would remove a segment when init detaches it after
    // filling it).
    const LATER: &[&str] = &["msgmnb", "msgmax", "shm_rmid_forced"];
    for (name, value) in &img.sysctls {
        if LATER.contains(&name.as_str()) {
            continue;
        }
        if read_sysctl(name).as_deref() != Some(value.as_str()) {
            write_sysctl(name, value)?;
        }
    }
    for s in &img.shm {
        restore_segment(s, shmem)?;
    }
    for s in &img.sem {
        write_sysctl("sem_next_id", &s.perm.id.to_string())?;
        let n = s.values.len() as i32;
        let mode = (s.perm.mode & 0o777) as i32;
        // SAFETY: semget takes integers only.
        let got = as_creator(&s.perm, || unsafe {
            libc::semget(s.perm.key, n, mode | libc::IPC_CREAT | libc::IPC_EXCL)
        })?;
        check_id("semaphore set", &s.perm, got)?;
        let mut values = s.values.clone();
        // SAFETY: SETALL reads nsems unsigned shorts from `values`.
        if unsafe { libc::semctl(got, 0, libc::SETALL, values.as_mut_ptr()) } < 0 {
            return Err(format!(
                "setting the values of semaphore set {got}: {}",
                std::io::Error::last_os_error()
            ));
        }
        set_owner_mode("semaphore set", &s.perm, |perm| {
            // SAFETY: an all-zero semid_ds is valid; IPC_SET reads its perm.
            let mut ds: libc::semid_ds = unsafe { std::mem::zeroed() };
            ds.sem_perm = *perm;
            // SAFETY: IPC_SET reads `ds`.
            unsafe { libc::semctl(got, 0, libc::IPC_SET, &mut ds as *mut libc::semid_ds) }
        })?;
    }
    let msgmnb = read_sysctl("msgmnb");
    let msgmax = read_sysctl("msgmax");
    for q in &img.msg {
        let longest = q.messages.iter().map(|m| m.data.len).max().unwrap_or(0);
        let max_now: u64 = read_sysctl("msgmax")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if longest > max_now {
            write_sysctl("msgmax", &longest.to_string())?;
        }
        write_sysctl("msgmnb", &q.qbytes.to_string())?;
        write_sysctl("msg_next_id", &q.perm.id.to_string())?;
        let mode = (q.perm.mode & 0o777) as i32;
        // SAFETY: msgget takes integers only.
        let got = as_creator(&q.perm, || unsafe {
            libc::msgget(q.perm.key, mode | libc::IPC_CREAT | libc::IPC_EXCL)
        })?;
        check_id("message queue", &q.perm, got)?;
        for (i, m) in q.messages.iter().enumerate() {
            let mut buf = vec![0u8; 8 + m.data.len as usize];
            buf[..8].copy_from_slice(&m.mtype.to_le_bytes());
            blobs
                .read_exact_at(&mut buf[8..], m.data.offset)
                .map_err(|e| format!("reading message {i} of queue {got} from blobs.img: {e}"))?;
            // SAFETY: msgsnd reads a long and `len` bytes from `buf`.
            let rc = unsafe {
                libc::msgsnd(
                    got,
                    buf.as_ptr().cast(),
                    m.data.len as usize,
                    libc::IPC_NOWAIT,
                )
            };
            if rc < 0 {
                return Err(format!(
                    "queueing message {i} on queue {got}: {}",
                    std::io::Error::last_os_error()
                ));
            }
        }
        set_owner_mode("message queue", &q.perm, |perm| {
            // SAFETY: an all-zero msqid_ds is valid.
            let mut ds: libc::msqid_ds = unsafe { std::mem::zeroed() };
            ds.msg_perm = *perm;
            ds.msg_qbytes = q.qbytes as _;
            // SAFETY: IPC_SET reads `ds`.
            unsafe { libc::msgctl(got, libc::IPC_SET, &mut ds) }
        })?;
    }
    // The namespace's own settings last.
    let rmid = read_sysctl("shm_rmid_forced");
    for (name, now) in [
        ("msgmnb", msgmnb),
        ("msgmax", msgmax),
        ("shm_rmid_forced", rmid),
    ] {
        let want = img.sysctls.get(name).cloned().or(now);
        if let Some(v) = want {
            if read_sysctl(name).as_deref() != Some(v.as_str()) {
                write_sysctl(name, &v)?;
            }
        }
    }
    Ok(())
}

fn restore_segment(s: &ShmSegment, shmem: Option<&File>) -> Result<(), String> {
    write_sysctl("shm_next_id", &s.perm.id.to_string())?;
    let mode = (s.perm.mode & 0o777) as i32;
    // SAFETY: shmget takes integers only.
    let got = as_creator(&s.perm, || unsafe {
        libc::shmget(
            s.perm.key,
            s.size as usize,
            mode | libc::IPC_CREAT | libc::IPC_EXCL,
        )
    })?;
    check_id("shared memory segment", &s.perm, got)?;
    if !s.pages.is_empty() {
        let shmem = shmem.ok_or("the image has SysV segment contents but no shmem.img")?;
        // SAFETY: attaching the new segment wherever the kernel puts it; detached below.
        let at = unsafe { libc::shmat(got, std::ptr::null(), 0) };
        if at as isize == -1 {
            return Err(format!(
                "attaching segment {got} to fill it: {}",
                std::io::Error::last_os_error()
            ));
        }
        let mut res = Ok(());
        for r in &s.pages {
            // SAFETY: the run lies inside the segment (validated), attached
            // read-write at `at`.
            let dst = unsafe {
                std::slice::from_raw_parts_mut(
                    (at as *mut u8).add(r.addr as usize),
                    (r.npages * PAGE_SIZE) as usize,
                )
            };
            if let Err(e) = shmem.read_exact_at(dst, r.offset) {
                res = Err(format!("filling segment {got} from shmem.img: {e}"));
                break;
            }
        }
        // SAFETY: detaching the attach made above.
        unsafe { libc::shmdt(at) };
        res?;
    }
    set_owner_mode("shared memory segment", &s.perm, |perm| {
        // SAFETY: an all-zero shmid_ds is valid.
        let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
        ds.shm_perm = *perm;
        // SAFETY: IPC_SET reads `ds`.
        unsafe { libc::shmctl(got, libc::IPC_SET, &mut ds) }
    })?;
    if s.perm.mode & SHM_LOCKED != 0 {
        // SAFETY: integers only.
        if unsafe { libc::shmctl(got, libc::SHM_LOCK, std::ptr::null_mut()) } < 0 {
            return Err(format!(
                "SHM_LOCK of segment {got}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// Run in init once it has attached the segments the tree maps: removes the
/// segments that were marked for removal (they live on while attached).
pub fn remove_destroyed(img: &IpcImage) -> Result<(), String> {
    for s in img.shm.iter().filter(|s| s.perm.mode & SHM_DEST != 0) {
        // SAFETY: integers only.
        if unsafe { libc::shmctl(s.perm.id, libc::IPC_RMID, std::ptr::null_mut()) } < 0 {
            return Err(format!(
                "removing segment {}: {}",
                s.perm.id,
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}
