//! `stasis dump`: freeze, stop every thread, collect, write, then kill the
//! tree or let it run on. Any error before the image is complete releases the
//! workload exactly as it was and removes the partial image.

use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::files::FileTable;
use crate::image::{
    page_file_name, Clocks, CpuFeatures, DumpStats, ImageWriter, Inventory, ProcessEntry,
    ProcessImage, PAGE_SIZE,
};
use crate::remote::Remote;
use crate::seize::{self, Seized, SeizedProcess};
use crate::{interrupt, memory, seccomp, signals, task, thread, timers, tree};

#[derive(Debug, Clone, Default)]
pub struct DumpOptions {
    /// Let the workload run on after the dump.
    pub leave_running: bool,
    /// Called as page data is written: (process, bytes done, bytes in all).
    pub progress: Option<fn(i32, u64, u64)>,
    /// Dump established TCP connections (TCP_REPAIR) instead of refusing them.
    pub tcp_established: bool,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The CPU features of this machine, as the image records them.
pub fn cpu_features() -> CpuFeatures {
    CpuFeatures {
        xcr0: sys::cpu::xcr0().unwrap_or(0),
        xstate_size: sys::cpu::xsave_size().unwrap_or(0),
        flags: sys::cpu::features().into_iter().map(String::from).collect(),
    }
}

/// Dumps sandbox `name` into `dir`.
///
/// SIGINT, SIGTERM and SIGHUP are held while it runs and answered with a
/// rollback; a guard process undoes what a SIGKILL would leave (see
/// [`crate::interrupt`]).
pub fn dump(state_dir: &Path, name: &str, dir: &Path, opts: &DumpOptions) -> Result<DumpStats> {
    let t0 = Instant::now();
    let held = interrupt::HeldSignals::hold();
    let sb = sandbox::Sandbox::open(state_dir, name)?;
    let lock = sb.lock_exclusive()?;
    let workload = sb
        .workload_pid()
        .ok_or_else(|| Error::Other(format!("sandbox {name} has no running workload")))?;
    // Before anything touches the workload: an image directory that cannot
    // be made is an error with nothing to undo.
    let writer = ImageWriter::create(dir)?;
    let tg = Instant::now();
    let guard = interrupt::Guard::start(&interrupt::GuardTask {
        cgroup: sb.cgroup(),
        ending: sb.ending(),
        sandbox: name,
        image_dir: dir,
        created_dir: writer.created_dir(),
    })?;
    tracing::debug!("dump guard {} started in {:?}", guard.pid, tg.elapsed());
    // /proc/locks is read beside the dump (see `LocksReader`): its thread
    // starts after the guard's fork, with the held signals blocked.
    let locks = crate::files::LocksReader::start();
    let beside = Beside {
        guard: &guard,
        locks,
    };
    let res = dump_locked(t0, sb, lock, workload, writer, beside, opts);
    // Everything is undone or complete by now (the rollback happens as
    // `dump_locked` returns).
    let td = Instant::now();
    match &res {
        // The sandbox was killed and removed; its processes are still
        // exiting: the guard removes its cgroup once they have.
        Ok(_) if !opts.leave_running => guard.hand_over(),
        _ => guard.disarm(),
    }
    tracing::debug!("dump guard told in {:?}", td.elapsed());
    drop(held);
    res
}

/// What runs beside a dump: the guard process that undoes a killed dump, and
/// the thread that reads /proc/locks.
struct Beside<'a> {
    guard: &'a interrupt::Guard,
    locks: crate::files::LocksReader,
}

fn dump_locked(
    t0: Instant,
    sb: sandbox::Sandbox,
    lock: sandbox::LockGuard,
    workload: i32,
    mut writer: ImageWriter,
    beside: Beside<'_>,
    opts: &DumpOptions,
) -> Result<DumpStats> {
    let Beside { guard, mut locks } = beside;
    let log_path = sb.log_path();
    interrupt::check()?;
    sb.cgroup().freeze()?;
    let seized = (|| -> Result<Seized> {
        let procs = seize::discover(sb.init_pid())?;
        check_supported(&procs)?;
        Seized::seize(procs)
    })();
    // The tree is frozen and its threads seized (their stops come after the thaw).
    let paused = match &seized {
        Ok(_) => interrupt::pause_at("freeze", Some(guard)),
        Err(_) => Ok(()),
    };
    let thawed = sb.cgroup().thaw();
    let mut seized = seized?;
    thawed?;
    paused?;
    seized.wait_stops(Duration::from_secs(10), true)?;
    locks.tree_stopped();
    interrupt::check()?;
    // The clocks as the workload last saw them: restore goes on from here.
    let live: Vec<i32> = seized
        .procs
        .iter()
        .filter(|p| p.zombie.is_none())
        .map(|p| p.pid)
        .collect();
    let clocks = timers::clocks(&live)?;
    let t_frozen = Instant::now();
    let freeze_ms = ms(t_frozen - t0);

    let mut stats = DumpStats {
        freeze_ms,
        ..Default::default()
    };
    let workload_ns = seized
        .procs
        .iter()
        .find(|p| p.pid == workload)
        .map(|p| p.ns_pid)
        .unwrap_or(0);
    let about = About {
        // The state directory holding every sandbox's (the digest cache's home).
        state_dir: sb.state_dir().parent().unwrap_or(sb.state_dir()),
        log_path: &log_path,
        workload_ns,
        clocks,
    };
    // Pages to copy after the release (--leave-running), write-protected.
    let mut live = Vec::new();
    let repair = collect_all(
        &seized,
        &sb,
        about,
        (&mut writer, &mut live),
        &mut stats,
        opts,
        &mut locks,
    )?;
    interrupt::check()?;
    let t_collected = Instant::now();
    stats.collect_ms = ms(t_collected - t_frozen) - stats.memory_ms;

    // Release or kill before the manifest? The image must be complete before
    // the workload is killed; with --leave-running the workload goes on first.
    if opts.leave_running {
        // Connections leave repair mode before the workload goes on.
        drop(repair);
        seized.release()?;
        stats.frozen_ms = ms(t0.elapsed());
        // The protected pages, copied while the workload runs; an error
        // closes the userfaultfds, which lifts every protection.
        let tl = Instant::now();
        let ls = memory::live::copy_all(&mut live, &mut writer, opts.progress)?;
        drop(live);
        stats.live_ms = ms(tl.elapsed());
        stats.live_pages = ls.pages;
        stats.live_faults = ls.faults;
        let tw = Instant::now();
        let total = writer.finish(cpu_features())?;
        stats.write_ms = ms(tw.elapsed());
        stats.image_bytes = total;
    } else {
        let tw = Instant::now();
        let total = writer.finish(cpu_features())?;
        stats.write_ms = ms(tw.elapsed());
        stats.image_bytes = total;
        stats.frozen_ms = ms(t0.elapsed());
        // Killed, not waited for: freeing the memory of a large workload
        // takes the kernel about 0.1 s a GiB, which the command does not wait
        // out. Its name is free at once; the guard removes its cgroup later.
        seized.kill_and_leave();
        drop(lock);
        sb.kill_and_leave(guard.pid)?;
        // The sandbox's network is gone: connections close without a word.
        repair.close_in_repair();
    }
    stats.total_ms = ms(t0.elapsed());
    // The image already holds the stats of the collection; the final figures
    // are reported to the caller.
    Ok(stats)
}

/// Refuses what this version cannot dump, before anything is touched.
fn check_supported(procs: &[SeizedProcess]) -> Result<()> {
    let entries: Vec<ProcessEntry> = procs.iter().map(entry).collect();
    tree::check_rebuildable(&entries)
}

fn entry(p: &SeizedProcess) -> ProcessEntry {
    ProcessEntry {
        pid: p.ns_pid,
        ppid: p.ns_ppid,
        pgid: p.ns_pgid,
        sid: p.ns_sid,
        zombie: p.zombie,
    }
}

/// What the dump knows of the sandbox beyond its processes.
struct About<'a> {
    state_dir: &'a Path,
    log_path: &'a Path,
    workload_ns: i32,
    clocks: Option<Clocks>,
}

fn collect_all(
    seized: &Seized,
    sb: &sandbox::Sandbox,
    about: About<'_>,
    (writer, live): (&mut ImageWriter, &mut Vec<memory::live::Job>),
    stats: &mut DumpStats,
    opts: &DumpOptions,
    locks: &mut crate::files::LocksReader,
) -> Result<crate::net::tcp_repair::RepairGuard> {
    let About {
        state_dir,
        log_path,
        workload_ns,
        clocks,
    } = about;
    let mut files = FileTable::new(log_path);
    files.set_tree(
        sb.init_pid(),
        seized.procs.iter().map(|p| (p.pid, p.ns_pid)).collect(),
    );
    files.net.opts = crate::net::NetOptions {
        tcp_established: opts.tcp_established,
        veth_host: sb.veth_host().map(str::to_string),
    };
    let mut blobs = writer.create_file("blobs.img")?;
    let mut shared = memory::shared::Table::new();
    let mut shmem = writer.create_file("shmem.img")?;
    let mut dumped = Vec::with_capacity(seized.procs.len());
    for p in &seized.procs {
        if p.zombie.is_some() {
            continue;
        }
        interrupt::check()?;
        let img = collect_process(
            p,
            &mut files,
            &mut blobs,
            (&mut shared, &mut shmem),
            (&mut *writer, &mut *live),
            stats,
            opts,
        )?;
        writer.write_json(&format!("proc-{}.json", p.ns_pid), &img)?;
        stats.processes += 1;
        stats.threads += img.threads.len();
        stats.vmas += img.vmas.len();
        dumped.push(img);
    }
    files.check_locks(locks)?;
    let mounts = crate::mounts::collect(
        sb.init_pid(),
        &crate::mounts::private_tmpfs(sb.profile()),
        &mut blobs,
    )?;
    files.finish_sockets(&mut blobs)?;
    files.finish_ptys()?;
    let ipc = crate::ipc::collect(sb.init_pid(), &mut shmem, &mut blobs)?;
    for (shmid, pid) in shared.segments() {
        let known = ipc
            .as_ref()
            .is_some_and(|i| i.shm.iter().any(|s| s.perm.id == shmid));
        if !known {
            return Err(Error::Unsupported {
                pid,
                what: format!("SysV shared memory segment {shmid}"),
                detail: "it is not in the sandbox's own IPC namespace".into(),
            });
        }
    }
    writer.commit_file(shmem)?;
    writer.write_json("shmem.json", &shared.image)?;
    writer.write_json("ipc.json", &ipc.unwrap_or_default())?;
    writer.commit_file(blobs)?;
    writer.write_json("files.json", &files.image)?;
    if sb.profile().namespaces.net {
        writer.write_json("net.json", &crate::net::netns::collect(sb.init_pid())?)?;
    }
    writer.write_json("mounts.json", &mounts)?;
    let mut digests = crate::deps::DigestCache::open(state_dir);
    let deps = crate::deps::collect(
        Path::new(&format!("/proc/{}/root", sb.init_pid())),
        &crate::mounts::private_tmpfs(sb.profile()),
        &dumped.iter().collect::<Vec<_>>(),
        &files.image,
        &mut digests,
    )?;
    digests.save();
    writer.write_json(crate::deps::FILE, &deps)?;
    let inv = Inventory {
        sandbox: sb.name().to_string(),
        profile: serde_json::to_value(sb.profile())
            .map_err(|e| Error::Other(format!("encoding profile: {e}")))?,
        log_path: log_path.to_string_lossy().to_string(),
        workload_pid: workload_ns,
        processes: seized.procs.iter().map(entry).collect(),
        stats: stats.clone(),
        clocks,
        command: sb.command().to_vec(),
        main_adopted: sb.main_adopted(),
    };
    // The log as it was when the tree stopped travels with the image.
    crate::logs::dump(log_path, writer)?;
    writer.write_json("inventory.json", &inv)?;
    Ok(files.net.take_repair())
}

/// Processes with at least this much resident memory have their present
/// pages found on a thread of their own while their areas are read.
const PRESENT_SCAN_BESIDE: u64 = 32 << 20;

fn collect_process(
    p: &SeizedProcess,
    files: &mut FileTable,
    blobs: &mut crate::image::PageSink,
    (shared, shmem): (&mut memory::shared::Table, &mut crate::image::PageSink),
    (writer, live): (&mut ImageWriter, &mut Vec<memory::live::Job>),
    stats: &mut DumpStats,
    opts: &DumpOptions,
) -> Result<ProcessImage> {
    let main = &p.threads[0];
    let tids: Vec<(i32, i32)> = p.threads.iter().map(|t| (t.tid, t.ns_tid)).collect();
    // Each thread's status, read once: its seccomp mode and its credentials.
    let statuses = p
        .threads
        .iter()
        .map(|t| task::thread_status(t.tid))
        .collect::<Result<Vec<_>>>()?;
    let modes: Vec<(i32, i32, u32)> = p
        .threads
        .iter()
        .zip(&statuses)
        .map(|(t, st)| (t.tid, t.ns_tid, st.seccomp.unwrap_or(0)))
        .collect();
    // Before anything is injected: filters that cannot be suspended refuse the dump.
    let seccomp = seccomp::collect(p.pid, p.ns_pid, &modes)?;
    let gadget = sys::inject::find_syscall_gadget(p.pid)?;
    let mut r = Remote::new(main.tid, gadget)?;
    // Resident and swapped bytes: whether the pages are found on a thread.
    let mut resident = 0u64;
    let res = (|| -> Result<ProcessImage> {
        // The main thread's (first) is the process's.
        let status = &statuses[0];
        resident = (status.vmrss.unwrap_or(0) + status.vmswap.unwrap_or(0)) * 1024;
        let (mut core, creds) = task::collect_core(p.pid, status, &mut r)?;
        core.stopped = main.group_stop;
        // Mid-injection: the scratch space is taken, syscalls have run.
        interrupt::pause_at("collect", None)?;
        let mm = memory::mm::collect(p.pid, &mut r)?;
        let sigactions = signals::collect_actions(status, &mut r)?;
        let shared_pending = signals::peek_pending(main.tid, true)?;
        let refs = |range: std::ops::Range<usize>| -> Vec<thread::ThreadRef> {
            p.threads[range.clone()]
                .iter()
                .zip(&statuses[range])
                .map(|(t, st)| thread::ThreadRef {
                    tid: t.tid,
                    ns_tid: t.ns_tid,
                    deferred: t.deferred_signal,
                    creds: task::creds_of(st),
                })
                .collect()
        };
        let mut threads = thread::collect_all(refs(0..1), std::slice::from_mut(&mut r))?;
        // Read once for all threads: nothing below changes the areas (each
        // thread's scratch is on its own stack, inside the stack's area).
        let areas = (p.threads.len() > 1)
            .then(|| crate::remote::maps_areas(p.pid))
            .flatten()
            .map(std::rc::Rc::new);
        // The other threads together: their injected calls overlap. A
        // sibling dropped on an error puts its thread's state back.
        let mut sibs = p.threads[1..]
            .iter()
            .map(|t| {
                let mut r2 = r.sibling(t.tid, gadget)?;
                if let Some(a) = &areas {
                    r2.use_areas(a.clone());
                }
                Ok(r2)
            })
            .collect::<Result<Vec<_>>>()?;
        let res = thread::collect_all(refs(1..p.threads.len()), &mut sibs);
        let mut fin = Ok(());
        for r2 in sibs {
            let f = r2.finish();
            if fin.is_ok() {
                fin = f;
            }
        }
        threads.extend(res?);
        fin?;
        // The process's credentials are the main thread's; other threads
        // keep their own only where they differ.
        for t in threads.iter_mut() {
            if t.creds.as_ref() == Some(&creds) {
                t.creds = None;
            }
        }
        let pidfd = p
            .pidfd
            .as_ref()
            .ok_or_else(|| Error::Other("no pidfd".into()))?;
        let fds = files.collect(p.pid, p.ns_pid, pidfd, blobs)?;
        files.attach_cwd(p.pid, p.ns_pid, &mut core, blobs)?;
        let rlimits = task::collect_rlimits(p.pid)?;
        let timers = timers::collect(p.pid, p.ns_pid, &mut r, &tids)?;
        let sched = crate::sched::collect(p.pid, &tids)?;
        Ok(ProcessImage {
            pid: p.ns_pid,
            core,
            creds,
            mm,
            vmas: Vec::new(),
            threads,
            sigactions,
            shared_pending,
            fds,
            rlimits,
            timers,
            seccomp,
            sched,
        })
    })();
    // The scratch page goes before the memory is read, so it is not in the image.
    let fin = r.finish();
    let mut img = res?;
    fin?;
    let tm = Instant::now();
    // --leave-running: private anonymous memory is write-protected (by a
    // thread, while the areas and pages are read) and copied after the
    // release (`memory::live`); the rest is copied now.
    let arming = match (&p.pidfd, opts.leave_running) {
        (Some(pidfd), true) => memory::live::begin(p.pid, main.tid, gadget, pidfd.as_fd())?,
        _ => None,
    };
    // The present pages of a large process are found beside the reading of
    // its areas (both walk its page tables); --leave-running finds those of
    // its protected areas as it protects them.
    let scan = (arming.is_none() && resident >= PRESENT_SCAN_BESIDE)
        .then(|| memory::pages::PresentScan::start(p.pid));
    let mut vmas = memory::collect(p.pid)?;
    tracing::debug!(pid = p.pid, ms = ms(tm.elapsed()), "areas read");
    files.attach_deleted(p.pid, p.ns_pid, &mut vmas, blobs)?;
    files.note_mappings(p.ns_pid, &vmas);
    shared.collect(p.pid, p.ns_pid, &mut vmas, shmem)?;
    let present = match (scan, &arming) {
        (Some(s), _) => s.join()?,
        (None, None) => memory::pages::Present::find(p.pid)?,
        (None, Some(_)) => None,
    };
    memory::live::scan(p.pid, arming.as_ref(), &mut vmas, present.as_ref())?;
    tracing::debug!(
        pid = p.pid,
        ms = ms(tm.elapsed()),
        "areas and pages scanned"
    );
    let armed = match arming {
        Some(a) => a.finish(&mut vmas)?,
        None => None,
    };
    // A large process's pages go to two files written at once (the live
    // copy of --leave-running appends to the first file alone).
    let mut sinks = vec![writer.create_file(&page_file_name(p.ns_pid, 0))?];
    if armed.is_none() && memory::pages::split_pages(memory::pages::scanned_bytes(&vmas)) {
        sinks.push(writer.create_file(&page_file_name(p.ns_pid, 1))?);
    }
    let ns_pid = p.ns_pid;
    let progress = opts
        .progress
        .map(|f| move |done, total| f(ns_pid, done, total));
    let mut pages = memory::pages::dump(p.pid, &mut vmas, &mut sinks, progress)?;
    // Page data written, not yet committed to the image.
    interrupt::pause_at("write", None)?;
    match armed {
        Some(a) => {
            let sink = sinks.pop().expect("one page file");
            let job = a.plan(&mut vmas, sink, p.ns_pid)?;
            pages += job.pages();
            live.push(job);
        }
        None => {
            for sink in sinks {
                writer.commit_file(sink)?;
            }
        }
    }
    stats.memory_ms += ms(tm.elapsed());
    stats.pages += pages;
    stats.page_bytes += pages * PAGE_SIZE;
    img.vmas = vmas;
    Ok(img)
}
