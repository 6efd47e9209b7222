//! `stasis restore`: verify the image, create a fresh sandbox from its
//! profile, fork the tree inside it with the same PIDs, then turn each
//! process into the dumped one from outside, under ptrace, and let them all
//! run together. Any failure removes the new sandbox whole.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::image::{
    page_file_name, FilesImage, ImageReader, Inventory, IpcImage, ProcessImage, SharedMemoryImage,
    PAGE_SIZE,
};
use crate::memory::{self, Rebuild, SCRATCH_PAGES, TRAMPOLINE_PAGES};
use crate::remote::{put_cstr, BatchCall, BatchSite, Remote, Staged};
use crate::seize::{self, Seized};
use crate::tree::{self, READY_RECORD};
use crate::{files, image, signals, task, thread};

#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Name of the new sandbox; the image's sandbox name when free, else generated.
    pub name: Option<String>,
    /// Restore even if host files the image depends on are missing or
    /// changed (each is reported as a warning).
    pub ignore_changed_files: bool,
}

/// Phase times (milliseconds) of a restore.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RestoreStats {
    /// Reading and verifying the image (`load`): the page files the memory
    /// restore reads are verified there, in `memory_ms`.
    pub verify_ms: f64,
    pub sandbox_ms: f64,
    pub fork_ms: f64,
    /// Rebuilding the processes: their memory (page files read and verified
    /// on the way) and everything else, until the tree is released.
    pub memory_ms: f64,
    pub total_ms: f64,
    pub processes: usize,
    pub pages: u64,
}

pub struct Restored {
    pub sandbox: sandbox::Sandbox,
    pub stats: RestoreStats,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A verified image, read whole but for its pages.
pub struct LoadedImage {
    pub reader: ImageReader,
    pub inventory: Inventory,
    pub files: FilesImage,
    pub mounts: crate::mounts::MountsImage,
    /// The network namespace at dump (absent in images without one).
    pub netns: Option<crate::net::netns::NetnsImage>,
    pub procs: BTreeMap<i32, ProcessImage>,
    /// Shared memory objects (empty in images made before they were saved as such).
    pub shmem: SharedMemoryImage,
    /// SysV IPC objects of the sandbox's IPC namespace.
    pub ipc: IpcImage,
    /// The host files the image depends on (empty in images made before
    /// they were recorded).
    pub deps: crate::deps::DepsImage,
    /// Page files not verified by `load`: the memory restore reads each of
    /// them whole and verifies it as it goes (`memory::pages::restore`);
    /// `verify_streamed` verifies them without restoring.
    pub streamed: BTreeSet<String>,
}

impl LoadedImage {
    /// Verifies the page files `load` left to the memory restore (for
    /// `inspect`, and whoever wants the whole image verified up front).
    pub fn verify_streamed(&self) -> Result<()> {
        let mut buf = memory::buf::AlignedBuf::new(256 << 10)?;
        for name in &self.streamed {
            self.reader
                .open_streamed(name)?
                .read_verified(&mut buf, |_, _| Ok(()))?;
        }
        Ok(())
    }
}

/// The kernel's PID_MAX_LIMIT on 64-bit: the pid_max of a fresh PID
/// namespace, so every PID below it can be had there with clone3(set_tid).
pub const PID_MAX_LIMIT: i32 = 4 * 1024 * 1024;

/// Opens and verifies an image: every bound, and every checksum but those of
/// the page files the memory restore reads whole (`LoadedImage::streamed`),
/// which it verifies as it reads them.
pub fn load(dir: &Path) -> Result<LoadedImage> {
    let reader = ImageReader::open(dir)?;
    let here = crate::dump::cpu_features();
    let cpu = &reader.manifest().cpu;
    if cpu.xcr0 & !here.xcr0 != 0 || cpu.xstate_size > here.xstate_size {
        return Err(Error::BadImage {
            path: dir.to_path_buf(),
            reason: format!(
                "made on a CPU with xstate features {:#x} ({} bytes); this CPU has {:#x} ({} bytes)",
                cpu.xcr0, cpu.xstate_size, here.xcr0, here.xstate_size
            ),
        });
    }
    if cpu.flags.len() > 1024 || cpu.flags.iter().any(|f| f.len() > 64) {
        return Err(Error::BadImage {
            path: dir.to_path_buf(),
            reason: format!("manifest: {} CPU features", cpu.flags.len()),
        });
    }
    let lacking: Vec<&str> = cpu
        .flags
        .iter()
        .filter(|f| !here.flags.contains(f))
        .map(String::as_str)
        .collect();
    if !lacking.is_empty() {
        return Err(Error::BadImage {
            path: dir.to_path_buf(),
            reason: format!(
                "made on a CPU with features this CPU lacks: {} (the workload may use them)",
                lacking.join(", ")
            ),
        });
    }
    let inventory: Inventory = reader.read_json("inventory.json")?;
    crate::logs::validate(&reader)?;
    if inventory.processes.len() > image::limits::MAX_PROCESSES {
        return Err(Error::Other(format!(
            "image: {} processes",
            inventory.processes.len()
        )));
    }
    let files: FilesImage = reader.read_json("files.json")?;
    let mounts: crate::mounts::MountsImage = reader.read_json("mounts.json")?;
    crate::mounts::validate(&mounts).map_err(in_file("mounts.json"))?;
    crate::net::validate(&files.sockets, &files.unix_files)?;
    let netns = match reader.file_size("net.json") {
        Some(_) => Some(reader.read_json("net.json")?),
        None => None,
    };
    let mut procs = BTreeMap::new();
    for e in &inventory.processes {
        if e.pid <= 1 || e.pid >= PID_MAX_LIMIT {
            return Err(Error::Other(format!("image: bad PID {}", e.pid)));
        }
        if e.zombie.is_some() {
            continue;
        }
        let p: ProcessImage = reader.read_json(&format!("proc-{}.json", e.pid))?;
        validate_process(&reader, &p, &files).map_err(in_file(&format!("proc-{}.json", e.pid)))?;
        procs.insert(e.pid, p);
    }
    image::refs::check(&inventory, &files, &procs)?;
    tree::check_rebuildable(&inventory.processes).map_err(in_file("inventory.json"))?;
    files::validate_links(
        &files,
        &procs.values().collect::<Vec<_>>(),
        &inventory.processes.iter().map(|e| e.pid).collect(),
    )
    .map_err(in_file("files.json"))?;
    files::tty::validate_sessions(&files, &inventory.processes).map_err(in_file("files.json"))?;
    let shmem: SharedMemoryImage = if reader.file_size("shmem.json").is_some() {
        reader.read_json("shmem.json")?
    } else {
        SharedMemoryImage::default()
    };
    let shmem_size = reader.file_size("shmem.img").unwrap_or(0);
    memory::shared::validate(&shmem, shmem_size, &procs).map_err(in_file("shmem.json"))?;
    let ipc: IpcImage = if reader.file_size("ipc.json").is_some() {
        reader.read_json("ipc.json")?
    } else {
        IpcImage::default()
    };
    crate::ipc::validate(&ipc, shmem_size, reader.file_size("blobs.img").unwrap_or(0))
        .map_err(in_file("ipc.json"))?;
    for o in &shmem.objects {
        if let image::SharedObjectKind::Sysv { shmid } = o.kind {
            if !ipc.shm.iter().any(|s| s.perm.id == shmid) {
                return Err(Error::Other(format!(
                    "image: shared memory object {} is SysV segment {shmid}, which ipc.json lacks",
                    o.id
                )));
            }
        }
    }
    if let Some(c) = &inventory.clocks {
        crate::timers::validate_clocks(c).map_err(in_file("inventory.json"))?;
    }
    let deps: crate::deps::DepsImage = match reader.file_size(crate::deps::FILE) {
        Some(_) => reader.read_json(crate::deps::FILE)?,
        None => Default::default(),
    };
    crate::deps::validate(&deps)?;
    // Every other file (page files no restored process reads included) is
    // verified here, before anything is made.
    let streamed: BTreeSet<String> = procs
        .values()
        .flat_map(|p| {
            memory::pages::files_used(&p.vmas)
                .into_iter()
                .map(|k| page_file_name(p.pid, k))
        })
        .collect();
    reader.verify_all_except(&streamed)?;
    Ok(LoadedImage {
        reader,
        inventory,
        files,
        mounts,
        netns,
        procs,
        shmem,
        ipc,
        deps,
        streamed,
    })
}

/// A validation error of the records of image file `name`, as an error
/// naming that file (refusals of what is not supported stay as they are).
fn in_file(name: &str) -> impl FnOnce(Error) -> Error + '_ {
    move |e| match e {
        Error::Other(m) => Error::BadImage {
            path: name.into(),
            reason: m.trim_start_matches("image: ").to_string(),
        },
        Error::Process { pid, reason } => Error::BadImage {
            path: name.into(),
            reason: format!("process {pid}: {reason}"),
        },
        e => e,
    }
}

fn validate_process(reader: &ImageReader, p: &ProcessImage, files: &FilesImage) -> Result<()> {
    use image::limits::*;
    if p.vmas.len() > MAX_VMAS
        || p.fds.len() > MAX_FDS
        || p.threads.len() > MAX_THREADS
        || p.threads.is_empty()
    {
        return Err(Error::Other(format!(
            "image of process {}: {} areas, {} fds, {} threads",
            p.pid,
            p.vmas.len(),
            p.fds.len(),
            p.threads.len()
        )));
    }
    let mut tids: Vec<i32> = p.threads.iter().map(|t| t.tid).collect();
    tids.sort_unstable();
    tids.dedup();
    if p.threads[0].tid != p.pid
        || tids.len() != p.threads.len()
        || tids.iter().any(|&t| t <= 1 || t >= PID_MAX_LIMIT)
    {
        return Err(Error::Other(format!(
            "image of process {}: bad thread ids {tids:?}",
            p.pid
        )));
    }
    memory::pages::validate(p.pid, &p.vmas, |k| {
        reader.file_size(&page_file_name(p.pid, k))
    })?;
    memory::mm::validate(p.pid, &p.mm)?;
    for t in &p.threads {
        thread::validate(p.pid, t)?;
    }
    files::validate(p.pid, &p.fds, files)?;
    let tids: Vec<i32> = p.threads.iter().map(|t| t.tid).collect();
    crate::timers::validate(p.pid, &p.timers, &tids)?;
    crate::seccomp::validate(p.pid, &p.seccomp, &tids)?;
    crate::sched::validate(p.pid, &p.sched, &tids)?;
    if let Some(sig) = p.core.stopped {
        if !matches!(
            sig,
            libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU
        ) {
            return Err(Error::BadImage {
                path: format!("proc-{}.json", p.pid).into(),
                reason: format!(
                    "process {}: stopped by signal {sig}, not a stop signal",
                    p.pid
                ),
            });
        }
    }
    Ok(())
}

/// Refuses an image whose host files are missing or changed, before
/// anything is created (or warns of each, when told to go on).
fn check_host_files(state_dir: &Path, deps: &crate::deps::DepsImage, ignore: bool) -> Result<()> {
    let mut digests = crate::deps::DigestCache::open(state_dir);
    let changed = crate::deps::check(Path::new("/"), deps, &mut digests)?;
    digests.save();
    if changed.is_empty() {
        return Ok(());
    }
    if !ignore {
        return Err(crate::deps::refusal(&changed));
    }
    for c in &changed {
        tracing::warn!("restoring despite a changed host file: {c}");
    }
    Ok(())
}

fn raise_nofile() {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on our own process with a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

/// Restores an image into a new sandbox. A watcher process (a
/// `sandbox::Guard`, forked first, while stasis is single-threaded) removes
/// the new sandbox whole should this process die before the restore is done;
/// failures seen here are undone here.
pub fn restore(state_dir: &Path, dir: &Path, opts: &RestoreOptions) -> Result<Restored> {
    let guard = sandbox::Guard::spawn()?;
    let r = restore_guarded(state_dir, dir, opts, &guard);
    guard.disarm();
    r
}

/// For every file description of the image, "process P fd N, ..." for the
/// fds that hold it ("file description ID" when none does), in one pass over
/// the fd tables.
fn holders(files: &FilesImage, procs: &BTreeMap<i32, ProcessImage>) -> BTreeMap<u32, String> {
    let mut by_id: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for p in procs.values() {
        for f in &p.fds {
            by_id
                .entry(f.file)
                .or_default()
                .push(format!("process {} fd {}", p.pid, f.fd));
        }
    }
    files
        .files
        .iter()
        .map(|f| {
            let text = match by_id.remove(&f.id) {
                Some(v) => v.join(", "),
                None => format!("file description {}", f.id),
            };
            (f.id, text)
        })
        .collect()
}

fn restore_guarded(
    state_dir: &Path,
    dir: &Path,
    opts: &RestoreOptions,
    guard: &sandbox::Guard,
) -> Result<Restored> {
    let t0 = Instant::now();
    let img = load(dir)?;
    check_host_files(state_dir, &img.deps, opts.ignore_changed_files)?;
    let verify_ms = ms(t0.elapsed());
    let profile: sandbox::Profile =
        serde_json::from_value(img.inventory.profile.clone()).map_err(|e| Error::BadImage {
            path: dir.to_path_buf(),
            reason: format!("profile: {e}"),
        })?;
    crate::net::netns::check_profile(&profile, &img.files.sockets)?;
    if !img.files.ptys.is_empty() && !profile.mounts.dev {
        return Err(Error::BadImage {
            path: "inventory.json".into(),
            reason: "the image holds ptys but its profile gives the sandbox no /dev of its own \
                     (mounts.dev): they are made only in a devpts of the sandbox's own"
                .into(),
        });
    }

    // Everything the tree needs is opened here and inherited by init.
    raise_nofile();
    let max_target = img
        .procs
        .values()
        .flat_map(|p| p.fds.iter().map(|f| f.fd))
        .max()
        .unwrap_or(2);
    // Fds passed to a process only for its rebuild (memfds and deleted files
    // it maps, a deleted cwd) go right above the tree's fd numbers; init
    // keeps what the tree inherits at numbers none of them uses (`FdPlan`).
    let slots: BTreeMap<i32, Vec<(files::Slot, u32)>> = img
        .procs
        .iter()
        .map(|(pid, p)| (*pid, files::slots(p, &img.files)))
        .collect();
    let extra = slots.values().map(Vec::len).max().unwrap_or(0) as i32;
    let slot_base = max_target + 1;
    let plan = files::FdPlan::new(
        img.procs.values().flat_map(|p| p.fds.iter().map(|f| f.fd)),
        slot_base..slot_base + extra,
    );
    plan.check_room(&img.files)?;
    let blobs = img.reader.open_checked("blobs.img")?;
    let blobs = File::from(plan.place(blobs.into())?);
    let mut pages: BTreeMap<i32, memory::pages::PageFiles> = BTreeMap::new();
    for (pid, p) in &img.procs {
        let mut files = memory::pages::PageFiles::new();
        for k in memory::pages::files_used(&p.vmas) {
            files.insert(k, img.reader.open_streamed(&page_file_name(*pid, k))?);
        }
        pages.insert(*pid, files);
    }
    let shmem_file = match img.reader.file_size("shmem.img") {
        Some(_) => Some(File::from(
            plan.place(img.reader.open_checked("shmem.img")?.into())?,
        )),
        None => None,
    };
    let (ready_r, ready_w) = pipe()?;
    let ready_w = plan.place(ready_w)?;
    // Where init maps the shared memory objects for the tree to inherit.
    let layout = memory::shared::Layout::plan(&img.shmem, img.procs.values())?;
    let init_layout = layout.clone();
    let shmem_img = img.shmem.clone();
    let ipc_img = img.ipc.clone();

    let entries = img.inventory.processes.clone();
    // Who forks whom, with the helpers that hold sessions and groups.
    let tree_plan = tree::plan(&entries)?;
    let live = entries.iter().filter(|e| e.zombie.is_none()).count();
    let files_img = img.files.clone();
    let mounts_img = img.mounts.clone();
    let netns_img = img.netns.clone();
    let fd_tables: BTreeMap<i32, Vec<(i32, u32, bool)>> = img
        .procs
        .iter()
        .map(|(pid, p)| {
            (
                *pid,
                p.fds
                    .iter()
                    .map(|f| (f.fd, f.file, f.cloexec))
                    .chain(
                        slots[pid]
                            .iter()
                            .enumerate()
                            .map(|(k, &(_, held))| (slot_base + k as i32, held, true)),
                    )
                    .collect(),
            )
        })
        .collect();
    let workload = img.inventory.workload_pid;
    let ready_w_raw = ready_w.as_raw_fd();
    let holders = holders(&img.files, &img.procs);
    let launch = sandbox::Launch::Custom(Box::new(move |ctx: &sandbox::InitContext| {
        // Held open until the tree is forked.
        let _keep = &ready_w;
        crate::mounts::restore(&mounts_img, &blobs)?;
        if let Some(n) = &netns_img {
            crate::net::netns::check(n, &files_img.sockets).map_err(|e| e.to_string())?;
        }
        // SysV objects with their ids, then the shared memory objects the
        // tree inherits (segments attached), then segments marked for
        // removal are removed (they live on while attached).
        crate::ipc::restore(&ipc_img, shmem_file.as_ref(), &blobs)?;
        if !init_layout.is_empty() {
            let shmem = shmem_file
                .as_ref()
                .ok_or("the image has shared memory objects but no shmem.img")?;
            init_layout.materialize(&shmem_img, shmem)?;
        }
        crate::ipc::remove_destroyed(&ipc_img)?;
        let files::OpenFiles { fds, holders, ctty } =
            files::open_all(&files_img, Some(&blobs), ctx.log_fd).map_err(|e| match e {
                Error::File { id, cause } => format!(
                    "{}: {cause}",
                    holders
                        .get(&id)
                        .map_or("a file of the image", |h| h.as_str())
                ),
                e => e.to_string(),
            })?;
        let mut held = Vec::new();
        let mut tree_plan = tree_plan;
        for fd in fds {
            held.push(plan.place(fd).map_err(|e| e.to_string())?);
        }
        for p in tree_plan.plans.iter_mut().filter(|p| !p.helper) {
            if let Some(t) = fd_tables.get(&p.pid) {
                p.fds = t
                    .iter()
                    .map(|&(fd, file, cx)| {
                        held.get(file as usize)
                            .map(|h| (fd, h.as_raw_fd(), cx))
                            .ok_or_else(|| {
                                format!("process {} fd {fd}: no file description {file}", p.pid)
                            })
                    })
                    .collect::<std::result::Result<_, String>>()?;
            }
        }
        // Controlling terminals: the session leader takes it, the leader
        // of the foreground group (a member of the session) sets it.
        let mut ctty_held = Vec::new();
        for (i, p) in files_img.ptys.iter().enumerate() {
            let Some(fd) = ctty.get(i).and_then(|f| f.as_ref()) else {
                continue;
            };
            let fd = plan
                .place(fd.try_clone().map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
            for plan in tree_plan.plans.iter_mut() {
                if Some(plan.pid) == p.session && plan.sid == plan.pid {
                    plan.ctty = Some(fd.as_raw_fd());
                }
                if Some(plan.pid) == p.fg_pgrp && plan.pgid == plan.pid {
                    plan.foreground = Some(fd.as_raw_fd());
                }
            }
            ctty_held.push(fd);
        }
        drop(ctty);
        crate::faults::pause_point("restore-launch");
        if crate::faults::fail_point("restore-init-panic") {
            panic!("a panic injected in the sandbox's init (STASIS_TEST_FAIL_AT)");
        }
        if crate::faults::fail_point("restore-pid-taken") {
            occupy_pid(tree_plan.plans[tree_plan.roots[0]].pid)?;
        }
        let pids = tree::fork_roots(&tree_plan, ready_w_raw)?;
        // The tree holds the shared memory objects now.
        init_layout.release();
        drop(held);
        drop(holders);
        drop(ctty_held);
        let root_pid = if pids.contains(&workload) {
            workload
        } else {
            *pids.first().ok_or("the image holds no process")?
        };
        Ok(root_pid)
    }));
    let t1 = Instant::now();
    let name = opts
        .name
        .clone()
        .unwrap_or_else(|| img.inventory.sandbox.clone());
    // The sandbox starts in a time namespace where the workload's monotonic
    // clocks go on from the dump (see `timers`).
    let timens = match &img.inventory.clocks {
        Some(c) => crate::timers::TimeNamespace::for_children(c)?,
        None => None,
    };
    let created =
        sandbox::Sandbox::create_guarded(state_dir, Some(&name), &profile, launch, Some(guard));
    drop(timens);
    let mut sb = created?;
    let sandbox_ms = ms(t1.elapsed());
    tracing::debug!(ms = sandbox_ms, "sandbox created");

    let t2 = Instant::now();
    let result = (|| -> Result<RestoreStats> {
        // The log written before the dump, before anything of the tree runs.
        crate::logs::restore(&img.reader, &sb.log_path())?;
        wait_ready(&ready_r, live, &sb)?;
        crate::faults::pause_point("restore-tree");
        let fork_ms = ms(t2.elapsed());
        let tm = Instant::now();
        // Zombies report nothing: a process whose last child reports ready
        // may still be on its way out. Wait (bounded) until each is one.
        let deadline = Instant::now() + Duration::from_secs(10);
        let (found, host) = loop {
            let found = seize::discover(sb.init_pid())?;
            let host: BTreeMap<i32, i32> = found.iter().map(|p| (p.ns_pid, p.pid)).collect();
            let exiting = entries.iter().filter(|e| e.zombie.is_some()).any(|e| {
                let state = host
                    .get(&e.pid)
                    .and_then(|&h| procfs::process::Process::new(h).ok()?.stat().ok());
                !matches!(state, Some(s) if s.state == 'Z')
            });
            if !exiting || Instant::now() >= deadline {
                break (found, host);
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        tracing::debug!(ms = ms(tm.elapsed()), "tree found");
        for e in &entries {
            let Some(&h) = host.get(&e.pid) else {
                return Err(Error::Other(format!("process {} did not come back", e.pid)));
            };
            let zombie = found.iter().any(|p| p.pid == h && p.zombie.is_some());
            if e.zombie.is_some() && !zombie {
                return Err(Error::Other(format!(
                    "process {} did not become a zombie",
                    e.pid
                )));
            }
        }
        let live_found: Vec<_> = found.into_iter().filter(|p| p.zombie.is_none()).collect();
        // The processes are independent while they are rebuilt: with several,
        // two threads each seize, rebuild and release half of them (ptrace
        // requests come from the thread that seized). Both meet before either
        // releases, so no process runs before the whole tree is rebuilt, and
        // none does if either fails. The threads are joined before anything
        // else happens; stasis forks nothing meanwhile.
        let workers = if live_found.len() >= 4 { 2 } else { 1 };
        let mut groups: Vec<Vec<seize::SeizedProcess>> = (0..workers).map(|_| Vec::new()).collect();
        for (i, p) in live_found.into_iter().enumerate() {
            groups[i % workers].push(p);
        }
        let failed = std::sync::atomic::AtomicBool::new(false);
        let meet = std::sync::Barrier::new(workers);
        // Ok(Some(pages)) when released, Ok(None) when another group failed.
        let rebuild_group =
            |group: Vec<seize::SeizedProcess>, alone: bool| -> Result<Option<u64>> {
                // A panic below must not leave the other thread waiting at
                // the barrier: it counts as a failure and meets it.
                let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(
                    || -> Result<(Seized, u64)> {
                        let mut seized = Seized::seize(group)?;
                        seized.kill_on_drop();
                        seized.wait_stops(Duration::from_secs(10), alone)?;
                        let mut pages_total = 0;
                        let held: Vec<(i32, i32, i32)> = seized
                            .procs
                            .iter()
                            .map(|sp| (sp.pid, sp.ns_pid, sp.threads[0].tid))
                            .collect();
                        for (host_pid, ns_pid, main_tid) in held {
                            let p = &img.procs[&ns_pid];
                            let (n, threads) = rebuild_process(
                                host_pid,
                                main_tid,
                                ready_w_raw,
                                p,
                                &pages[&ns_pid],
                                &img.files,
                                (slot_base, &slots[&ns_pid]),
                                &layout,
                            )?;
                            pages_total += n;
                            seized.adopt_threads(host_pid, &threads);
                        }
                        Ok((seized, pages_total))
                    },
                ))
                .unwrap_or_else(|_| Err(Error::Other("a rebuilding thread panicked".into())));
                if res.is_err() {
                    failed.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                meet.wait();
                let (seized, n) = res?;
                if failed.load(std::sync::atomic::Ordering::SeqCst) {
                    // Killed as it drops; the sandbox is removed whole.
                    return Ok(None);
                }
                // A process that was stopped gets its stop signal while still
                // held: it stops again as soon as it is released, before it
                // runs an instruction.
                for sp in &seized.procs {
                    if let Some(sig) = img.procs.get(&sp.ns_pid).and_then(|p| p.core.stopped) {
                        // SAFETY: tgkill takes plain integers; the process is ours and held.
                        unsafe { libc::syscall(libc::SYS_tgkill, sp.pid, sp.pid, sig) };
                    }
                }
                seized.release()?;
                Ok(Some(n))
            };
        let results: Vec<Result<Option<u64>>> = if workers == 1 {
            groups.into_iter().map(|g| rebuild_group(g, true)).collect()
        } else {
            std::thread::scope(|sc| {
                let handles: Vec<_> = groups
                    .into_iter()
                    .map(|g| sc.spawn(|| rebuild_group(g, false)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join().unwrap_or_else(|_| {
                            Err(Error::Other("a rebuilding thread panicked".into()))
                        })
                    })
                    .collect()
            })
        };
        let mut pages_total = 0;
        let mut first_err = None;
        for r in results {
            match r {
                Ok(Some(n)) => pages_total += n,
                Ok(None) => {}
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        tracing::debug!(ms = ms(tm.elapsed()), "tree rebuilt");
        tracing::debug!(ms = ms(tm.elapsed()), "tree released");
        sb.set_restored(img.inventory.command.clone(), img.inventory.main_adopted)?;
        if let Some(&h) = host.get(&workload) {
            sb.set_workload_pid(h)?;
        }
        tracing::debug!(ms = ms(tm.elapsed()), "sandbox state updated");
        Ok(RestoreStats {
            verify_ms,
            sandbox_ms,
            fork_ms,
            memory_ms: ms(tm.elapsed()),
            total_ms: 0.0,
            processes: entries.len(),
            pages: pages_total,
        })
    })();
    match result {
        Ok(mut stats) => {
            stats.total_ms = ms(t0.elapsed());
            Ok(Restored { sandbox: sb, stats })
        }
        Err(e) => {
            let _ = sb.kill();
            let _ = sb.remove();
            Err(e)
        }
    }
}

/// For the reliability tests (`STASIS_TEST_FAIL_AT=restore-pid-taken`):
/// a process of init's that takes `pid` in the new PID namespace before the
/// tree is forked, so that clone3(set_tid) meets a PID in use. It waits
/// (every signal blocked, as in init) until the namespace ends.
fn occupy_pid(pid: i32) -> std::result::Result<(), String> {
    // SAFETY: init is single-threaded; the child only loops in pause().
    let r = unsafe { sys::clone3::clone3(0, libc::SIGCHLD as u64, &[pid]) }
        .map_err(|e| format!("taking PID {pid} for the test: {e}"))?;
    if r == 0 {
        loop {
            // SAFETY: pause has no arguments.
            unsafe { libc::pause() };
        }
    }
    Ok(())
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(Error::Io {
            what: "pipe2".into(),
            cause: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: both fds are new and ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Reads one ready record per live process.
fn wait_ready(r: &OwnedFd, n: usize, sb: &sandbox::Sandbox) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut got = 0;
    let mut buf = [0u8; READY_RECORD];
    let mut have = 0;
    while got < n {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::Other(format!(
                "{got} of {n} processes were ready in time"
            )));
        }
        let mut pfd = libc::pollfd {
            fd: r.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one pollfd we own.
        let rc = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(1000) as i32) };
        if rc == 0 {
            if !sb.is_running() {
                return Err(Error::Other(
                    "the sandbox's init died during restore".into(),
                ));
            }
            continue;
        }
        // SAFETY: reading into our buffer.
        let k = unsafe {
            libc::read(
                r.as_raw_fd(),
                buf[have..].as_mut_ptr().cast(),
                READY_RECORD - have,
            )
        };
        if k <= 0 {
            return Err(Error::Other(format!(
                "the restored tree stopped reporting: {got} of {n} processes ready"
            )));
        }
        have += k as usize;
        if have == READY_RECORD {
            have = 0;
            let pid = i32::from_le_bytes(buf[..4].try_into().expect("4 bytes"));
            let err = i32::from_le_bytes(buf[4..].try_into().expect("4 bytes"));
            if err != 0 {
                return Err(Error::Process {
                    pid,
                    reason: if err == tree::PANICKED {
                        "setting up the restored process failed: it panicked".into()
                    } else {
                        format!(
                            "setting up the restored process failed: {}",
                            std::io::Error::from_raw_os_error(err)
                        )
                    },
                });
            }
            got += 1;
        }
    }
    Ok(())
}

/// Bytes of the trampoline's scratch area.
const SCRATCH_LEN: u64 = SCRATCH_PAGES * PAGE_SIZE;
/// Entries of each other thread's batch table at restore (more run in turns).
const THREAD_TABLE: usize = 128;
const THREAD_TABLE_BYTES: u64 = (THREAD_TABLE * sys::inject::BATCH_ENTRY) as u64;
/// Bytes of each other thread's slot: its table, then its data.
const THREAD_SLOT: u64 = THREAD_TABLE_BYTES + PAGE_SIZE;

/// Turns a restored process (stopped, running stasis code) into the dumped
/// one. Returns the number of pages filled and the host TIDs of the threads
/// it created (traced, to be released with the rest).
/// `ready_fd` is its copy of the ready pipe: it closes it right after it
/// reports, but it may be seized in between, so it is closed from here too
/// (EBADF when the process got there first).
/// `slots` gives the fd number of the first memfd or deleted file it maps
/// and those objects (`files::slots`).
/// Most steps run as batches of syscalls at the trampoline (one ptrace
/// round trip each): the old layout's unmapping with the new areas' mmaps,
/// their protection and advice with the vDSO, the mm fields with the
/// signal actions and core attributes, each thread's registrations,
/// pending signals and credentials.
#[allow(clippy::too_many_arguments)]
fn rebuild_process(
    pid: i32,
    tid: i32,
    ready_fd: i32,
    p: &ProcessImage,
    pages: &memory::pages::PageFiles,
    files_img: &FilesImage,
    slots: (i32, &[(files::Slot, u32)]),
    layout: &memory::shared::Layout,
) -> Result<(u64, Vec<i32>)> {
    let t0 = Instant::now();
    let gadget = sys::inject::find_syscall_gadget(pid)?;
    let mut r = Remote::new(tid, gadget)?;
    // A restored task is discarded should stasis die.
    r.set_step();
    let t = &p.threads[0];
    let mut first = vec![BatchCall {
        what: "close of the ready pipe".into(),
        nr: libc::SYS_close,
        args: [ready_fd as u64, 0, 0, 0, 0, 0],
        may_fail: true,
    }];
    first.extend(thread::unregister_rseq(&r));
    let mut rb = Rebuild::start(&mut r, &p.vmas, &layout.keep_for(&p.vmas), first)?;
    let scratch = rb.scratch();
    let site = rb.site();
    for (k, &(slot, _)) in slots.1.iter().enumerate() {
        let fd = (slots.0 + k as i32) as u64;
        rb.add_slot(slot, fd);
        if p.core.cwd_ghost.map(files::Slot::Ghost) == Some(slot) {
            rb.queue(BatchCall {
                what: format!("fchdir to deleted cwd {}", p.core.cwd),
                nr: libc::SYS_fchdir,
                args: [fd, 0, 0, 0, 0, 0],
                may_fail: false,
            });
        }
    }
    rb.hold_locks(files::locks::mapped_in(p, files_img));
    for v in &p.vmas {
        rb.map_area(&mut r, v)?;
    }
    rb.flush(&mut r)?;
    tracing::debug!(pid, ms = ms(t0.elapsed()), "areas mapped");
    let pages = memory::pages::restore(&mut r, &p.vmas, pages)?;
    tracing::debug!(pid, ms = ms(t0.elapsed()), "pages filled");
    crate::faults::pause_point("restore-rebuild");
    for v in &p.vmas {
        rb.finish_area(v)?;
    }
    rb.unpark();
    if let Some(c) = memory::mm::vdso_call(&p.vmas) {
        rb.queue(c);
    }
    rb.flush(&mut r)?;
    memory::mm::check_vdso(&r, &p.vmas)?;
    memory::aio::restore(&mut r, &p.vmas, scratch, SCRATCH_LEN)?;
    put_cstr(&mut r, scratch, &p.mm.exe)?;
    let exe_fd = r.call(
        &format!("open {}", p.mm.exe),
        libc::SYS_openat,
        [
            libc::AT_FDCWD as u64,
            scratch,
            (libc::O_RDONLY | libc::O_CLOEXEC) as u64,
            0,
            0,
            0,
        ],
    )?;
    let mut st = Staged::new(site);
    memory::mm::stage_mm(&mut st, &mut r, &p.mm, exe_fd)?;
    memory::mm::stage_mm_flags(&mut st, &p.mm);
    st.call("close(exe)", libc::SYS_close, [exe_fd, 0, 0, 0, 0, 0]);
    rb.stage_close_files(&mut st);
    signals::stage_actions(&mut st, &mut r, &p.sigactions)?;
    task::stage_core(&mut st, &mut r, &p.core)?;
    st.call(
        "prctl(PR_GET_SECUREBITS)",
        libc::SYS_prctl,
        [libc::PR_GET_SECUREBITS as u64, 0, 0, 0, 0, 0],
    );
    // The other threads' tables and data, a slot each (unmapped at the end).
    let others = p.threads.len() - 1;
    let region_len = THREAD_SLOT * others as u64;
    if others > 0 {
        st.call(
            "mmap(thread batches)",
            libc::SYS_mmap,
            [
                0,
                region_len,
                (libc::PROT_READ | libc::PROT_WRITE) as u64,
                (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
                u64::MAX,
                0,
            ],
        );
    }
    let got = st.finish(&mut r)?;
    let (securebits, region) = if others > 0 {
        (got[got.len() - 2] as u32, got[got.len() - 1] as u64)
    } else {
        (got[got.len() - 1] as u32, 0)
    };
    files::restore_in_task(&mut r, p, files_img, scratch)?;
    task::restore_loginuid(&mut r, scratch, &p.core)?;
    task::restore_rlimits(pid, &p.rlimits)?;
    // The credentials every thread starts with (the others are cloned
    // from this one), read once.
    let creds_now = task::creds_now(r.tid, securebits)?;
    // The other threads, cloned from this one with their TIDs: they share
    // everything set so far and get their own registrations below.
    let ns_tids: Vec<i32> = p.threads[1..].iter().map(|t| t.tid).collect();
    let hosts = thread::clone_threads(&mut r, pid, &ns_tids, site)?;
    // Scheduling attributes, from outside, on every thread (before the
    // credentials, which may drop the right to raise them).
    let by_tid: Vec<(i32, i32)> = std::iter::once((t.tid, r.tid))
        .chain(ns_tids.iter().copied().zip(hosts.iter().copied()))
        .collect();
    crate::sched::restore(pid, p.pid, &p.sched, &by_tid)?;
    tracing::debug!(
        pid,
        ms = ms(t0.elapsed()),
        threads = hosts.len(),
        "threads created"
    );
    let all: Vec<i32> = p.threads.iter().map(|t| t.tid).collect();
    let prefix = crate::seccomp::shared_prefix(&p.seccomp, &all);
    // The main thread's registrations and pending signals, run with its
    // credentials at the end unless timers or seccomp filters come between.
    let mut main = Staged::new(site);
    thread::stage_registrations(&mut main, &mut r, t)?;
    // The task names itself by its PIDs in its own namespace.
    signals::stage_pending(&mut main, &mut r, p.pid, t.tid, &t.pending, false)?;
    signals::stage_pending(&mut main, &mut r, p.pid, t.tid, &p.shared_pending, true)?;
    if crate::timers::has_any(&p.timers)
        || !p.seccomp.filters.is_empty()
        || !p.seccomp.threads.is_empty()
    {
        main.run(&mut r)?;
    }
    // Timers once every thread they may signal exists.
    crate::timers::restore(&mut r, &p.timers, scratch)?;
    // seccomp before the credentials (see `seccomp`): the chain all
    // threads share from the main thread, synchronised to all of them.
    crate::seccomp::install(
        &mut r,
        &p.seccomp,
        &prefix,
        all.len() > 1,
        scratch,
        SCRATCH_LEN,
    )?;
    // Each other thread: its own seccomp filters, then one batch of its
    // registrations, pending signals and credentials, run by itself from a
    // slot of its own, all threads at once; then its final registers (it
    // stays stopped until the tree is released).
    let mut running = Vec::with_capacity(hosts.len());
    for (k, (&host, t2)) in hosts.iter().zip(&p.threads[1..]).enumerate() {
        let mut r2 = r.sibling(host, rb.trampoline)?;
        r2.set_trap_gadget(rb.trampoline);
        r2.adopt_scratch(scratch, SCRATCH_LEN);
        crate::seccomp::restore_thread(
            &mut r2,
            &p.seccomp,
            t2.tid,
            prefix.len(),
            scratch,
            SCRATCH_LEN,
        )?;
        r2.drop_scratch();
        let at = region + THREAD_SLOT * k as u64;
        let mut st = Staged::new(BatchSite {
            entry: site.entry,
            table: at,
            cap: THREAD_TABLE,
            data: at + THREAD_TABLE_BYTES,
            data_len: THREAD_SLOT - THREAD_TABLE_BYTES,
        });
        thread::stage_registrations(&mut st, &mut r2, t2)?;
        signals::stage_pending(&mut st, &mut r2, p.pid, t2.tid, &t2.pending, false)?;
        let cr = t2.creds.as_ref().unwrap_or(&p.creds);
        task::stage_creds(&mut st, &mut r2, cr, &creds_now, &p.core)?;
        st.start(&mut r2)?;
        running.push((host, r2, st, t2));
    }
    for (host, mut r2, st, t2) in running {
        st.wait(&mut r2)?;
        thread::restore_cpu(host, t2)?;
        r2.abandon();
    }
    tracing::debug!(pid, ms = ms(t0.elapsed()), "other threads set up");
    crate::seccomp::restore_thread(
        &mut r,
        &p.seccomp,
        t.tid,
        prefix.len(),
        scratch,
        SCRATCH_LEN,
    )?;
    task::stage_creds(&mut main, &mut r, &p.creds, &creds_now, &p.core)?;
    if others > 0 {
        main.call(
            "munmap(thread batches)",
            libc::SYS_munmap,
            [region, region_len, 0, 0, 0, 0],
        );
    }
    let dumpable_set = task::stage_dumpable(&mut main, &p.core);
    main.finish(&mut r)?;
    if !dumpable_set {
        task::restore_dumpable(&mut r, &p.core)?;
    }
    r.drop_scratch();
    // The breakpoint goes with the page: stop at the syscall's exit instead.
    r.set_gadget(rb.trampoline);
    r.call(
        "munmap(trampoline)",
        libc::SYS_munmap,
        [rb.trampoline, TRAMPOLINE_PAGES * PAGE_SIZE, 0, 0, 0, 0],
    )?;
    thread::restore_cpu(tid, t)?;
    r.abandon();
    Ok((pages, hosts))
}
