//! Memory: the areas of an address space (this file), the pages they hold
//! (`pages`), and the mm fields, auxv and vDSO (`mm`).
//!
//! Dump reads /proc/PID/smaps for the areas and their flags. Restore rebuilds
//! the address space from outside, through syscalls injected at a trampoline
//! page mapped where neither the old nor the new layout has anything.

pub mod aio;
pub(crate) mod buf;
pub mod live;
pub mod mm;
pub mod pages;
pub mod shared;

use std::collections::{BTreeMap, HashMap};

use procfs::process::{MMPermissions, MMapPath, VmFlags};

use crate::error::{Error, Result};
use crate::image::{SharedRef, Vma, VmaKind, PAGE_SIZE};
use crate::remote::{BatchCall, BatchSite, Remote, Staged};

/// Highest user address plus one with 4-level page tables.
pub const TASK_SIZE: u64 = 0x7fff_ffff_f000;
/// Lowest address mmap accepts (vm.mmap_min_addr's usual value is below this).
const LOW_LIMIT: u64 = 0x10000;

const SPECIAL: &[&str] = &["[vvar]", "[vvar_vclock]", "[vdso]"];

fn prot_of(p: MMPermissions) -> u32 {
    let mut prot = 0;
    if p.contains(MMPermissions::READ) {
        prot |= libc::PROT_READ;
    }
    if p.contains(MMPermissions::WRITE) {
        prot |= libc::PROT_WRITE;
    }
    if p.contains(MMPermissions::EXECUTE) {
        prot |= libc::PROT_EXEC;
    }
    prot as u32
}

const ADVICE: &[(VmFlags, &str, i32)] = &[
    (VmFlags::DC, "dontfork", libc::MADV_DONTFORK),
    (VmFlags::WF, "wipeonfork", libc::MADV_WIPEONFORK),
    (VmFlags::DD, "dontdump", libc::MADV_DONTDUMP),
    (VmFlags::HG, "hugepage", libc::MADV_HUGEPAGE),
    (VmFlags::NH, "nohugepage", libc::MADV_NOHUGEPAGE),
    (VmFlags::MG, "mergeable", libc::MADV_MERGEABLE),
    (VmFlags::SR, "sequential", libc::MADV_SEQUENTIAL),
    (VmFlags::RR, "random", libc::MADV_RANDOM),
];

/// Flags of an area that are not madvise advice: how it was mapped
/// (`noreserve`, `droppable`) and locked (`locked`, `lockonfault`).
const NORESERVE: &str = "noreserve";
pub(crate) const DROPPABLE: &str = "droppable";
const LOCKED: &str = "locked";
const LOCKONFAULT: &str = "lockonfault";
/// A shared file mapping without PROT_WRITE whose file was open for
/// writing (VM_MAYWRITE): mprotect may add PROT_WRITE later.
const MAYWRITE: &str = "maywrite";
/// mmap's MAP_DROPPABLE (Linux 6.11; not in libc yet): a mapping type of
/// its own, in place of MAP_PRIVATE.
const MAP_DROPPABLE: u64 = 0x08;
/// madvise's MADV_GUARD_INSTALL (Linux 6.13; not in libc yet).
const MADV_GUARD_INSTALL: u64 = 102;
/// mlock2's flag: lock pages as they fault in.
const MLOCK_ONFAULT: u64 = 0x01;

/// smaps flags procfs does not know (`lf`: VM_LOCKONFAULT, `dp`:
/// VM_DROPPABLE), per area in the order of the areas.
#[derive(Default, Clone, Copy)]
struct ExtraFlags {
    lockonfault: bool,
    droppable: bool,
}

/// /proc/PID/smaps, parsed for the header line and the `VmFlags` line of
/// each area only: the other lines (a score of counters per area, most of
/// the text) are dropped before parsing, which otherwise costs more than
/// the kernel's writing of them with many areas.
fn read_smaps(pid: i32) -> Result<(procfs::process::MemoryMaps, Vec<ExtraFlags>)> {
    use procfs::FromBufRead;
    let text = std::fs::read(format!("/proc/{pid}/smaps")).map_err(|e| Error::Process {
        pid,
        reason: format!("reading smaps: {e}"),
    })?;
    let mut kept = Vec::with_capacity(text.len() / 8);
    let mut extra = Vec::new();
    for line in text.split(|&b| b == b'\n') {
        // A header starts with the area's start address in lower-case hex;
        // every other line with a capitalised key.
        let header = line
            .first()
            .is_some_and(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
        if header {
            extra.push(ExtraFlags::default());
        }
        if let (Some(flags), Some(x)) = (line.strip_prefix(b"VmFlags:"), extra.last_mut()) {
            for f in flags.split(|&b| b == b' ') {
                match f {
                    b"lf" => x.lockonfault = true,
                    b"dp" => x.droppable = true,
                    _ => {}
                }
            }
        }
        if header || line.starts_with(b"VmFlags:") {
            kept.extend_from_slice(line);
            kept.push(b'\n');
        }
    }
    let maps =
        procfs::process::MemoryMaps::from_buf_read(&kept[..]).map_err(|e| Error::Process {
            pid,
            reason: format!("parsing smaps: {e}"),
        })?;
    Ok((maps, extra))
}

/// Reads the memory areas of `pid` (pages are filled in by `pages::dump`).
pub fn collect(pid: i32) -> Result<Vec<Vma>> {
    let (maps, extra) = read_smaps(pid)?;
    let mut out = Vec::new();
    for (i, m) in maps.into_iter().enumerate() {
        let x = extra.get(i).copied().unwrap_or_default();
        let (start, end) = m.address;
        let flags = m.extension.vm_flags;
        let shared = m.perms.contains(MMPermissions::SHARED);
        let mut shared_object = None;
        let (kind, name) = match &m.pathname {
            MMapPath::Vsyscall => continue,
            MMapPath::Vdso => (
                VmaKind::Special {
                    name: "[vdso]".into(),
                },
                "[vdso]".to_string(),
            ),
            MMapPath::Vvar => (
                VmaKind::Special {
                    name: "[vvar]".into(),
                },
                "[vvar]".to_string(),
            ),
            MMapPath::Other(s)
                if SPECIAL.contains(&format!("[{}]", s.trim_matches(['[', ']'])).as_str()) =>
            {
                let n = format!("[{}]", s.trim_matches(['[', ']']));
                (VmaKind::Special { name: n.clone() }, n)
            }
            MMapPath::Vsys(key) if shared => {
                // A SysV shared memory segment ("/SYSV<key> (deleted)").
                shared_object = Some(SharedRef {
                    object: u32::MAX,
                    offset: m.offset,
                });
                let label = format!("/SYSV{key:08x} (deleted)");
                (VmaKind::Anon, label)
            }
            MMapPath::Heap => (VmaKind::Anon, "[heap]".to_string()),
            MMapPath::Stack => (VmaKind::Anon, "[stack]".to_string()),
            MMapPath::TStack(_) | MMapPath::Anonymous => (VmaKind::Anon, String::new()),
            MMapPath::Path(p) => {
                let s = p.to_string_lossy().to_string();
                if shared && s == aio::RING_PATH {
                    (aio::collect(pid, start, end)?, "[aio]".to_string())
                } else if shared && shared::is_shared_object(&s) {
                    // Resolved to an object of the image by `shared::Table`.
                    shared_object = Some(SharedRef {
                        object: u32::MAX,
                        offset: m.offset,
                    });
                    let label = if s.starts_with("/SYSV") {
                        s.clone()
                    } else {
                        String::new()
                    };
                    (VmaKind::Anon, label)
                } else {
                    // A memfd or a deleted file is restored as an object of
                    // its own (`files::FileTable::attach_deleted` fills
                    // `memfd` or `ghost`).
                    let deleted = s.ends_with(" (deleted)");
                    (
                        VmaKind::File {
                            path: s.clone(),
                            offset: m.offset,
                            dev: libc::makedev(m.dev.0 as u32, m.dev.1 as u32),
                            ino: m.inode,
                            deleted,
                            memfd: None,
                            ghost: None,
                        },
                        s,
                    )
                }
            }
            other => {
                return Err(Error::Unsupported {
                    pid,
                    what: format!("memory area {start:#x}-{end:#x}"),
                    detail: format!("{other:?}"),
                })
            }
        };
        let special = matches!(kind, VmaKind::Special { .. });
        if !special && (flags.contains(VmFlags::IO) || flags.contains(VmFlags::PF)) {
            return Err(Error::Unsupported {
                pid,
                what: format!("device memory area {start:#x}-{end:#x}"),
                detail: name,
            });
        }
        if flags.contains(VmFlags::HT) {
            return Err(Error::Unsupported {
                pid,
                what: format!("hugetlbfs area {start:#x}-{end:#x}"),
                detail: name,
            });
        }
        let mut advice: Vec<String> = ADVICE
            .iter()
            .filter(|(f, _, _)| flags.contains(*f))
            .map(|(_, n, _)| n.to_string())
            .collect();
        if !special {
            let own = [
                (flags.contains(VmFlags::NR), NORESERVE),
                (x.droppable, DROPPABLE),
                (flags.contains(VmFlags::LO), LOCKED),
                (x.lockonfault, LOCKONFAULT),
                (
                    shared
                        && matches!(kind, VmaKind::File { .. })
                        && !m.perms.contains(MMPermissions::WRITE)
                        && flags.contains(VmFlags::MW),
                    MAYWRITE,
                ),
            ];
            advice.extend(own.iter().filter(|(on, _)| *on).map(|(_, n)| n.to_string()));
        }
        out.push(Vma {
            start,
            end,
            prot: prot_of(m.perms),
            shared,
            growsdown: flags.contains(VmFlags::GD),
            advice,
            label: name,
            kind,
            pages: Vec::new(),
            guards: Vec::new(),
            shared_object,
        });
    }
    Ok(out)
}

/// Areas currently mapped in `pid`, as (start, end), from /proc/PID/maps.
pub fn current_ranges(pid: i32) -> Result<Vec<(u64, u64)>> {
    let text =
        std::fs::read_to_string(format!("/proc/{pid}/maps")).map_err(|e| Error::Process {
            pid,
            reason: format!("reading maps: {e}"),
        })?;
    let mut v = Vec::new();
    for line in text.lines() {
        let range = line.split_whitespace().next().unwrap_or("");
        if let Some((a, b)) = range.split_once('-') {
            if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                v.push((a, b));
            }
        }
    }
    Ok(v)
}

/// Lowest address with `len` free bytes in both sets of ranges.
fn free_in_both(a: &[(u64, u64)], b: &[(u64, u64)], len: u64) -> Option<u64> {
    let mut all: Vec<(u64, u64)> = a.iter().chain(b).copied().collect();
    all.sort_unstable();
    let mut cursor = LOW_LIMIT;
    for (s, e) in all {
        if s >= cursor + len {
            return Some(cursor);
        }
        cursor = cursor.max(e);
    }
    (cursor + len <= TASK_SIZE).then_some(cursor)
}

/// Bytes at the start of a restore trampoline: a `syscall` instruction
/// followed by `int3` (single injected calls); the batch loop
/// (`sys::inject::BATCH_CODE`) follows at `BATCH_CODE_AT`.
const TRAMPOLINE_CODE: [u8; 3] = [0x0f, 0x05, 0xcc];
/// Offset of the batch loop in the trampoline's code page.
const BATCH_CODE_AT: u64 = 16;
/// Pages of scratch for syscall arguments, after the code page.
pub const SCRATCH_PAGES: u64 = 3;
/// Pages of the batch table, after the scratch.
const BATCH_PAGES: u64 = 16;
/// Pages of the trampoline: code, scratch, batch table.
pub const TRAMPOLINE_PAGES: u64 = 1 + SCRATCH_PAGES + BATCH_PAGES;
/// Entries of the batch table.
const BATCH_CAP: usize = (BATCH_PAGES * PAGE_SIZE) as usize / sys::inject::BATCH_ENTRY;

/// The address space being rebuilt in a restored task.
pub struct Rebuild {
    pub trampoline: u64,
    /// fds opened in the task for file mappings, by path.
    files: HashMap<String, u64>,
    /// Files whose mappings hold locks (`hold_locks`).
    locked: Vec<crate::files::locks::MappedFile>,
    /// Shared memory objects inherited from init, kept while the areas that
    /// map them are made: object id -> address.
    parked: BTreeMap<u32, (u64, u64)>,
    /// Calls waiting for `flush`, with the result each must return (mmap
    /// at a fixed address), if any.
    pending: Vec<(BatchCall, Option<u64>)>,
    /// The old layout's unmapping (queued by `start`) has run.
    unmapped: bool,
}

impl Rebuild {
    /// Maps the trampoline where neither layout has anything, then queues
    /// `first` (calls that must run before the task's memory goes) and the
    /// unmapping of everything else but the shared memory objects in `keep`
    /// (id, address, length; see `shared`): the task keeps nothing of the
    /// stasis process it was. The queued calls run with the areas' mmaps
    /// (`flush`), as one batch.
    pub fn start(
        r: &mut Remote,
        target: &[Vma],
        keep: &[(u32, u64, u64)],
        first: Vec<BatchCall>,
    ) -> Result<Self> {
        let cur = current_ranges(r.tid)?;
        let tgt: Vec<(u64, u64)> = target.iter().map(|v| (v.start, v.end)).collect();
        let len = TRAMPOLINE_PAGES * PAGE_SIZE;
        let at = free_in_both(&cur, &tgt, len).ok_or_else(|| Error::Process {
            pid: r.tid,
            reason: "no address free in both layouts for the restore trampoline".into(),
        })?;
        let got = r.call(
            "mmap(trampoline)",
            libc::SYS_mmap,
            [
                at,
                len,
                (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) as u64,
                (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE) as u64,
                u64::MAX,
                0,
            ],
        )?;
        if got != at {
            return Err(Error::Process {
                pid: r.tid,
                reason: format!("trampoline mapped at {got:#x}, wanted {at:#x}"),
            });
        }
        let mut code = TRAMPOLINE_CODE.to_vec();
        code.resize(BATCH_CODE_AT as usize, 0xcc);
        code.extend_from_slice(&sys::inject::BATCH_CODE);
        r.write_mem(at, &code)?;
        r.set_trap_gadget(at);
        r.adopt_scratch(at + PAGE_SIZE, len - PAGE_SIZE);
        let mut pending: Vec<(BatchCall, Option<u64>)> =
            first.into_iter().map(|c| (c, None)).collect();
        // Everything around the trampoline and the kept objects goes.
        let mut stay: Vec<(u64, u64)> = keep.iter().map(|&(_, a, l)| (a, a + l)).collect();
        stay.push((at, at + len));
        stay.sort_unstable();
        let mut cursor = LOW_LIMIT;
        for (s, e) in stay.iter().copied().chain([(TASK_SIZE, TASK_SIZE)]) {
            if s > cursor {
                pending.push((
                    BatchCall {
                        what: format!("munmap({cursor:#x}-{s:#x})"),
                        nr: libc::SYS_munmap,
                        args: [cursor, s - cursor, 0, 0, 0, 0],
                        may_fail: false,
                    },
                    None,
                ));
            }
            cursor = cursor.max(e);
        }
        Ok(Rebuild {
            trampoline: at,
            files: HashMap::new(),
            locked: Vec::new(),
            parked: keep.iter().map(|&(id, a, l)| (id, (a, l))).collect(),
            pending,
            unmapped: false,
        })
    }

    /// Queues a call to run with the next `flush`.
    pub fn queue(&mut self, call: BatchCall) {
        self.pending.push((call, None));
    }

    /// Runs the calls `map_area` and `finish_area` queued, in order, in
    /// batches at the trampoline; an error names the area whose call failed.
    pub fn flush(&mut self, r: &mut Remote) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        let calls: Vec<BatchCall> = pending.iter().map(|(c, _)| c.clone()).collect();
        let got = r.batch(
            self.trampoline + BATCH_CODE_AT,
            self.batch_table(),
            BATCH_CAP,
            &calls,
        )?;
        for ((c, want), got) in pending.iter().zip(got) {
            if let Some(want) = *want {
                if got as u64 != want {
                    return Err(Error::Process {
                        pid: r.tid,
                        reason: format!("{}: mapped at {got:#x}, wanted {want:#x}", c.what),
                    });
                }
            }
        }
        self.unmapped = true;
        Ok(())
    }

    fn batch_table(&self) -> u64 {
        self.trampoline + (1 + SCRATCH_PAGES) * PAGE_SIZE
    }

    /// Queues the unmapping of the shared memory objects kept for the areas
    /// (once they are all mapped), for the next `flush`.
    pub fn unpark(&mut self) {
        for (id, (a, l)) in std::mem::take(&mut self.parked) {
            self.queue(BatchCall {
                what: format!("munmap of shared memory object {id} at {a:#x}"),
                nr: libc::SYS_munmap,
                args: [a, l, 0, 0, 0, 0],
                may_fail: false,
            });
        }
    }

    pub fn scratch(&self) -> u64 {
        self.trampoline + PAGE_SIZE
    }

    /// The trampoline's batch loop and table, with its scratch pages as the
    /// data area, for calls staged elsewhere (`remote::Staged`).
    pub fn site(&self) -> BatchSite {
        BatchSite {
            entry: self.trampoline + BATCH_CODE_AT,
            table: self.batch_table(),
            cap: BATCH_CAP,
            data: self.scratch(),
            data_len: SCRATCH_PAGES * PAGE_SIZE,
        }
    }

    /// The files whose areas map a description holding locks (see
    /// `files::locks`): each is opened once, locked, and all its areas are
    /// mapped through that fd, which is then closed with the others.
    pub fn hold_locks(&mut self, locked: Vec<crate::files::locks::MappedFile>) {
        self.locked = locked;
    }

    /// The fd in the task that the areas of `path` are mapped through.
    fn file_fd(&mut self, r: &mut Remote, path: &str, flags: i32) -> Result<u64> {
        let Some(i) = self.locked.iter().position(|m| m.path == path) else {
            return self.open_in_task(r, &format!("{flags}:{path}"), path, flags);
        };
        let key = format!("locked:{path}");
        if let Some(fd) = self.files.get(&key) {
            return Ok(*fd);
        }
        let m = self.locked[i].clone();
        let fd = self.open_in_task(r, &key, path, m.oflags)?;
        crate::files::locks::take_in_task(r, fd, &m, self.scratch())?;
        Ok(fd)
    }

    fn open_in_task(&mut self, r: &mut Remote, key: &str, path: &str, flags: i32) -> Result<u64> {
        if let Some(fd) = self.files.get(key) {
            return Ok(*fd);
        }
        if path.len() >= (PAGE_SIZE as usize) {
            return Err(Error::Process {
                pid: r.tid,
                reason: format!("path too long: {path}"),
            });
        }
        let at = self.scratch();
        crate::remote::put_cstr(r, at, path)?;
        let fd = r
            .call(
                &format!("open {path}"),
                libc::SYS_openat,
                [
                    libc::AT_FDCWD as u64,
                    at,
                    (flags | libc::O_CLOEXEC) as u64,
                    0,
                    0,
                    0,
                ],
            )
            .map_err(|e| Error::Process {
                pid: r.tid,
                reason: format!("mapped file {path} cannot be opened: {e}"),
            })?;
        // The number was free, so any close of it still queued (the ready
        // pipe's, which the task may have closed itself before it was seized)
        // would close this file instead: that close has nothing left to do.
        self.pending
            .retain(|(c, _)| !(c.nr == libc::SYS_close && c.args[0] == fd));
        self.files.insert(key.to_string(), fd);
        Ok(fd)
    }

    /// Maps one area at its address: writable at first when it has pages to
    /// fill (`finish_area` puts the recorded protection back). A plain mmap
    /// is queued for `flush`, which must run before the area is used.
    pub fn map_area(&mut self, r: &mut Remote, v: &Vma) -> Result<()> {
        let len = v.end - v.start;
        let mut prot = v.prot as u64;
        if !v.pages.is_empty() {
            prot |= libc::PROT_WRITE as u64;
        }
        let mut flags = libc::MAP_FIXED as u64;
        let has = |f: &str| v.advice.iter().any(|a| a == f);
        flags |= if v.shared {
            libc::MAP_SHARED as u64
        } else if has(DROPPABLE) && matches!(v.kind, VmaKind::Anon) {
            MAP_DROPPABLE
        } else {
            libc::MAP_PRIVATE as u64
        };
        if v.growsdown {
            flags |= libc::MAP_GROWSDOWN as u64;
        }
        if has(NORESERVE) {
            flags |= libc::MAP_NORESERVE as u64;
        }
        if let Some(sr) = v.shared_object {
            let &(base, _) = self.parked.get(&sr.object).ok_or_else(|| Error::Process {
                pid: r.tid,
                reason: format!(
                    "area {:#x}-{:#x}: shared memory object {} was not inherited",
                    v.start, v.end, sr.object
                ),
            })?;
            // Moved into place at once: the old layout must be gone first.
            if !self.unmapped {
                self.flush(r)?;
            }
            return shared::map_area(r, v, sr, base);
        }
        let (fd, off) = match &v.kind {
            VmaKind::Special { .. } => return Ok(()),
            VmaKind::Aio { .. } => {
                // The ring's contents, in place until `aio::restore` moves
                // a new ring over them.
                flags =
                    libc::MAP_FIXED as u64 | libc::MAP_PRIVATE as u64 | libc::MAP_ANONYMOUS as u64;
                (u64::MAX, 0)
            }
            VmaKind::Anon => {
                flags |= libc::MAP_ANONYMOUS as u64;
                (u64::MAX, 0)
            }
            VmaKind::File {
                memfd: Some(id),
                offset,
                ..
            } => {
                let fd = self
                    .files
                    .get(&format!("memfd:{id}"))
                    .ok_or_else(|| Error::Process {
                        pid: r.tid,
                        reason: format!(
                            "area {:#x}-{:#x} maps memfd {id}, which was not passed to the task",
                            v.start, v.end
                        ),
                    })?;
                (*fd, *offset)
            }
            VmaKind::File {
                ghost: Some(id),
                offset,
                ..
            } => {
                let fd = self
                    .files
                    .get(&format!("ghost:{id}"))
                    .ok_or_else(|| Error::Process {
                        pid: r.tid,
                        reason: format!(
                            "area {:#x}-{:#x} maps deleted file {id}, which was not passed to the task",
                            v.start, v.end
                        ),
                    })?;
                (*fd, *offset)
            }
            VmaKind::File { path, offset, .. } => {
                let writable = v.prot & libc::PROT_WRITE as u32 != 0 || has(MAYWRITE);
                let oflags = if v.shared && writable {
                    libc::O_RDWR
                } else {
                    libc::O_RDONLY
                };
                (self.file_fd(r, path, oflags)?, *offset)
            }
        };
        self.pending.push((
            BatchCall {
                what: format!("mmap of area {:#x}-{:#x}", v.start, v.end),
                nr: libc::SYS_mmap,
                args: [v.start, len, prot, flags, fd, off],
                may_fail: false,
            },
            Some(v.start),
        ));
        Ok(())
    }

    /// Queues the calls that put back an area's protection and madvise flags
    /// (run by `flush`).
    pub fn finish_area(&mut self, v: &Vma) -> Result<()> {
        if matches!(v.kind, VmaKind::Special { .. } | VmaKind::Aio { .. }) {
            return Ok(());
        }
        let len = v.end - v.start;
        if !v.pages.is_empty() && v.prot & libc::PROT_WRITE as u32 == 0 {
            self.pending.push((
                BatchCall {
                    what: format!("mprotect of area {:#x}-{:#x}", v.start, v.end),
                    nr: libc::SYS_mprotect,
                    args: [v.start, len, v.prot as u64, 0, 0, 0],
                    may_fail: false,
                },
                None,
            ));
        }
        for a in &v.advice {
            if let Some((_, _, adv)) = ADVICE.iter().find(|(_, n, _)| n == a) {
                // KSM may be off; the other advice is not worth failing a restore for either.
                self.pending.push((
                    BatchCall {
                        what: format!("madvise({a}) of area {:#x}-{:#x}", v.start, v.end),
                        nr: libc::SYS_madvise,
                        args: [v.start, len, *adv as u64, 0, 0, 0],
                        may_fail: true,
                    },
                    None,
                ));
            }
        }
        for &[s, e] in &v.guards {
            self.pending.push((
                BatchCall {
                    what: format!("madvise(MADV_GUARD_INSTALL) of {s:#x}-{e:#x}"),
                    nr: libc::SYS_madvise,
                    args: [s, e - s, MADV_GUARD_INSTALL, 0, 0, 0],
                    may_fail: false,
                },
                None,
            ));
        }
        // Locked last, its pages in place: stasis's right to lock memory
        // (the task is still root here, before its credentials are set)
        // is not bound by RLIMIT_MEMLOCK, as the dumped task's may have been.
        if v.advice.iter().any(|a| a == LOCKED) {
            let onfault = v.advice.iter().any(|a| a == LOCKONFAULT);
            self.pending.push((
                BatchCall {
                    what: format!(
                        "mlock2{} of area {:#x}-{:#x}",
                        if onfault { "(MLOCK_ONFAULT)" } else { "" },
                        v.start,
                        v.end
                    ),
                    nr: libc::SYS_mlock2,
                    args: [
                        v.start,
                        len,
                        if onfault { MLOCK_ONFAULT } else { 0 },
                        0,
                        0,
                        0,
                    ],
                    may_fail: false,
                },
                None,
            ));
        }
        Ok(())
    }

    /// Maps areas of `slot` (a memfd or a deleted file) through `fd`, open
    /// in the task (closed by `stage_close_files`).
    pub fn add_slot(&mut self, slot: crate::files::Slot, fd: u64) {
        let key = match slot {
            crate::files::Slot::Memfd(id) => format!("memfd:{id}"),
            crate::files::Slot::Ghost(id) => format!("ghost:{id}"),
        };
        self.files.insert(key, fd);
    }

    /// Stages the closing of the fds opened for file mappings.
    pub fn stage_close_files(&mut self, st: &mut Staged) {
        for (key, fd) in self.files.drain() {
            st.call(
                format!("close of fd {fd} ({key})"),
                libc::SYS_close,
                [fd, 0, 0, 0, 0, 0],
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_range_search() {
        let a = [(0x10000, 0x20000), (0x30000, 0x40000)];
        let b = [(0x20000, 0x21000)];
        assert_eq!(free_in_both(&a, &b, 0x1000), Some(0x21000));
        assert_eq!(free_in_both(&a, &b, 0x10000), Some(0x40000));
        assert_eq!(free_in_both(&[], &[], 0x4000), Some(LOW_LIMIT));
    }
}
