//! Shared memory objects mapped by the tree: shared anonymous memory
//! (MAP_SHARED|MAP_ANONYMOUS, or a shared mapping of /dev/zero, inherited
//! across fork) and SysV shared memory segments. Each is one kernel object
//! however many areas and processes map it, and comes back as one.
//!
//! Dump: an area that maps such an object is recognised by its name in
//! /proc/PID/maps ("/dev/zero (deleted)", "/SYSV<key> (deleted)") and the
//! object by the device and inode of /proc/PID/map_files/START-END. An
//! anonymous object's pages are saved once, read through that file (its holes
//! skipped with SEEK_DATA/SEEK_HOLE), into `shmem.img`; a segment's contents
//! are saved with the IPC namespace (`crate::ipc`).
//!
//! Restore: before the tree is forked, the sandbox's init creates every
//! anonymous object with mmap(MAP_SHARED|MAP_ANONYMOUS) and fills it, and
//! attaches every segment, each at an address planned to be free in the
//! restoring process and in every target layout. The tree inherits these
//! mappings by fork. Each process keeps them while its address space is
//! rebuilt, maps each of its areas as a new mapping of the same pages with
//! mremap(old_size = 0, MREMAP_FIXED) at the area's address and offset, then
//! unmaps them. An area thus maps the very object the others map, and
//! /proc/PID/maps shows the same line as before the dump.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};

use crate::error::{Error, Result};
use crate::image::{
    PageRun, PageSink, SharedMemoryImage, SharedObject, SharedObjectKind, SharedRef, Vma, PAGE_SIZE,
};
use crate::remote::Remote;

/// Largest shared memory object an image may hold.
pub const MAX_OBJECT_BYTES: u64 = 1 << 40;

/// Whether a shared area's name in /proc/PID/maps is that of a shared
/// anonymous object or a SysV segment.
pub fn is_shared_object(name: &str) -> bool {
    name == "/dev/zero (deleted)" || (name.starts_with("/SYSV") && name.ends_with(" (deleted)"))
}

fn is_sysv(v: &Vma) -> bool {
    v.label.starts_with("/SYSV")
}

fn perr(pid: i32, reason: String) -> Error {
    Error::Process { pid, reason }
}

fn round_up(n: u64) -> u64 {
    n.div_ceil(PAGE_SIZE) * PAGE_SIZE
}

/// The shared objects of a dump, collected process by process.
#[derive(Default)]
pub struct Table {
    /// (device, inode) of anonymous objects, shmid of segments (device 0).
    by_key: HashMap<(u64, u64), u32>,
    /// The first process (in the sandbox) that maps each object.
    mapped_by: Vec<i32>,
    pub image: SharedMemoryImage,
}

impl Table {
    pub fn new() -> Self {
        Self::default()
    }

    /// Resolves the areas of `pid` that map shared objects: each gets the
    /// object's index and keeps no pages of its own. A new anonymous object's
    /// pages go to `sink`.
    pub fn collect(
        &mut self,
        pid: i32,
        ns_pid: i32,
        vmas: &mut [Vma],
        sink: &mut PageSink,
    ) -> Result<()> {
        for v in vmas.iter_mut() {
            let sysv = is_sysv(v);
            let Some(sr) = v.shared_object.as_mut() else {
                continue;
            };
            let path = format!("/proc/{pid}/map_files/{:x}-{:x}", v.start, v.end);
            let meta = std::fs::metadata(&path).map_err(|e| {
                perr(
                    pid,
                    format!(
                        "shared memory area {:#x}-{:#x}: stat {path}: {e}",
                        v.start, v.end
                    ),
                )
            })?;
            let key = if sysv {
                (0, meta.ino())
            } else {
                (meta.dev(), meta.ino())
            };
            let len = v.end - v.start;
            let need = round_up(sr.offset.saturating_add(len));
            if let Some(&id) = self.by_key.get(&key) {
                let obj = &mut self.image.objects[id as usize];
                if need > obj.size {
                    // An area that reaches past the object's size (grown by
                    // mremap): the object is recreated that large.
                    if let SharedObjectKind::Anon { .. } = obj.kind {
                        obj.size = need;
                    }
                }
                sr.object = id;
                continue;
            }
            let id = self.image.objects.len() as u32;
            let size = round_up(meta.size()).max(need);
            if size > MAX_OBJECT_BYTES {
                return Err(Error::Unsupported {
                    pid: ns_pid,
                    what: format!("shared memory area {:#x}-{:#x}", v.start, v.end),
                    detail: format!("its object has {size} bytes"),
                });
            }
            let kind = if sysv {
                let shmid = i32::try_from(meta.ino()).map_err(|_| {
                    perr(
                        pid,
                        format!("SysV segment inode {} is not a shmid", meta.ino()),
                    )
                })?;
                SharedObjectKind::Sysv { shmid }
            } else {
                let f = File::open(&path).map_err(|e| {
                    perr(
                        pid,
                        format!(
                            "shared memory area {:#x}-{:#x}: opening {path}: {e}",
                            v.start, v.end
                        ),
                    )
                })?;
                let pages = save_object(&f, meta.size(), sink).map_err(|e| {
                    perr(
                        pid,
                        format!(
                            "saving the shared memory of area {:#x}-{:#x}: {e}",
                            v.start, v.end
                        ),
                    )
                })?;
                SharedObjectKind::Anon { pages }
            };
            self.image.objects.push(SharedObject { id, size, kind });
            self.mapped_by.push(ns_pid);
            self.by_key.insert(key, id);
            sr.object = id;
        }
        Ok(())
    }

    /// The segments areas map: (shmid, a process that maps it).
    pub fn segments(&self) -> Vec<(i32, i32)> {
        self.image
            .objects
            .iter()
            .zip(&self.mapped_by)
            .filter_map(|(o, &pid)| match o.kind {
                SharedObjectKind::Sysv { shmid } => Some((shmid, pid)),
                SharedObjectKind::Anon { .. } => None,
            })
            .collect()
    }
}

/// Ranges of `f` (a shmem file of `size` bytes) that hold data, page aligned.
pub fn data_ranges(f: &File, size: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    let fd = f.as_raw_fd();
    let mut pos: i64 = 0;
    while (pos as u64) < size {
        // SAFETY: lseek on an fd we hold; no memory is passed.
        let data = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break;
            }
            return Err(e);
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let start = (data as u64) / PAGE_SIZE * PAGE_SIZE;
        let end = round_up((hole as u64).min(size));
        match out.last_mut() {
            Some(last) if last.1 >= start => last.1 = last.1.max(end),
            _ if end > start => out.push((start, end)),
            _ => {}
        }
        if hole <= pos {
            break;
        }
        pos = hole;
    }
    Ok(out)
}

/// Copies the data of a shmem file into `sink`: runs with `addr` = offset in
/// the object.
pub fn save_object(f: &File, size: u64, sink: &mut PageSink) -> Result<Vec<PageRun>> {
    let ranges = data_ranges(f, size).map_err(|e| Error::Other(format!("SEEK_DATA: {e}")))?;
    let mut buf = super::buf::AlignedBuf::new(super::pages::CHUNK)?;
    let mut runs = Vec::new();
    for (start, end) in ranges {
        runs.push(PageRun {
            addr: start,
            npages: (end - start) / PAGE_SIZE,
            offset: sink.position(),
            file: 0,
        });
        let mut at = start;
        while at < end {
            let n = ((end - at) as usize).min(buf.len());
            let chunk = &mut buf[..n];
            // Past the end of the file reads give 0 bytes: those are zero pages.
            let mut got = 0;
            while got < n {
                let k = f
                    .read_at(&mut chunk[got..], at + got as u64)
                    .map_err(|e| Error::Other(format!("reading at {at:#x}: {e}")))?;
                if k == 0 {
                    chunk[got..].fill(0);
                    break;
                }
                got += k;
            }
            sink.write_all(chunk)?;
            at += n as u64;
        }
    }
    Ok(runs)
}

/// Checks the objects and every area's reference to them.
pub fn validate(
    img: &SharedMemoryImage,
    pages_size: u64,
    procs: &BTreeMap<i32, crate::image::ProcessImage>,
) -> Result<()> {
    let bad = |what: String| Error::Other(format!("image: shmem.json: {what}"));
    if img.objects.len() > crate::image::limits::MAX_VMAS {
        return Err(bad(format!("{} objects", img.objects.len())));
    }
    for (i, o) in img.objects.iter().enumerate() {
        if o.id as usize != i || o.size == 0 || o.size % PAGE_SIZE != 0 || o.size > MAX_OBJECT_BYTES
        {
            return Err(bad(format!("object {} of {} bytes", o.id, o.size)));
        }
        if let SharedObjectKind::Anon { pages } = &o.kind {
            for r in pages {
                let ok = r.npages.checked_mul(PAGE_SIZE).is_some_and(|len| {
                    r.addr % PAGE_SIZE == 0
                        && r.addr.checked_add(len).is_some_and(|e| e <= o.size)
                        && r.offset.checked_add(len).is_some_and(|e| e <= pages_size)
                });
                if !ok {
                    return Err(bad(format!(
                        "object {}: page run at {:#x} ({} pages, offset {}) lies outside the object or shmem.img",
                        o.id, r.addr, r.npages, r.offset
                    )));
                }
            }
        }
    }
    for p in procs.values() {
        for v in &p.vmas {
            let Some(sr) = v.shared_object else { continue };
            let ok = img.objects.get(sr.object as usize).is_some_and(|o| {
                sr.offset % PAGE_SIZE == 0
                    && sr
                        .offset
                        .checked_add(v.end.saturating_sub(v.start))
                        .is_some_and(|e| e <= o.size)
            }) && v.shared
                && v.pages.is_empty();
            if !ok {
                return Err(Error::Other(format!(
                    "image of process {}: area {:#x}-{:#x} refers to shared object {} at offset {:#x}, which it cannot map",
                    p.pid, v.start, v.end, sr.object, sr.offset
                )));
            }
        }
    }
    Ok(())
}

/// Where the sandbox's init maps each object the tree uses, for the tree to
/// inherit: object id -> (address, length).
#[derive(Debug, Clone, Default)]
pub struct Layout {
    pub places: BTreeMap<u32, (u64, u64)>,
}

impl Layout {
    /// Places every object some area maps in one region free in the calling
    /// process (which init is a fork of) and in every target layout.
    pub fn plan<'a>(
        img: &SharedMemoryImage,
        procs: impl Iterator<Item = &'a crate::image::ProcessImage>,
    ) -> Result<Layout> {
        let mut used: Vec<u32> = Vec::new();
        let mut targets: Vec<(u64, u64)> = Vec::new();
        for p in procs {
            for v in &p.vmas {
                targets.push((v.start, v.end));
                if let Some(sr) = v.shared_object {
                    used.push(sr.object);
                }
            }
        }
        used.sort_unstable();
        used.dedup();
        if used.is_empty() {
            return Ok(Layout::default());
        }
        // A guard page after each object: no two of them touch.
        let total: u64 = used
            .iter()
            .map(|&id| img.objects[id as usize].size + PAGE_SIZE)
            .sum();
        // SAFETY: getpid takes no arguments.
        let own = super::current_ranges(unsafe { libc::getpid() })?;
        let base = super::free_in_both(&own, &targets, total).ok_or_else(|| {
            Error::Other(format!(
                "no {total} bytes of address space free in every process for the shared memory objects"
            ))
        })?;
        let mut places = BTreeMap::new();
        let mut at = base;
        for id in used {
            let size = img.objects[id as usize].size;
            places.insert(id, (at, size));
            at += size + PAGE_SIZE;
        }
        Ok(Layout { places })
    }

    pub fn is_empty(&self) -> bool {
        self.places.is_empty()
    }

    /// Run in the sandbox's init before the tree is forked: creates each
    /// anonymous object and fills it from `pages` (shmem.img), attaches each
    /// segment (which must exist by now).
    pub fn materialize(&self, img: &SharedMemoryImage, pages: &File) -> Result<(), String> {
        for (&id, &(addr, len)) in &self.places {
            let o = &img.objects[id as usize];
            match &o.kind {
                SharedObjectKind::Anon { pages: runs } => {
                    // SAFETY: a new shared anonymous mapping at an address
                    // planned free (MAP_FIXED_NOREPLACE refuses anything else).
                    let got = unsafe {
                        libc::mmap(
                            addr as *mut libc::c_void,
                            len as usize,
                            libc::PROT_READ | libc::PROT_WRITE,
                            libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                            -1,
                            0,
                        )
                    };
                    if got as u64 != addr {
                        return Err(format!(
                            "creating shared memory object {id} ({len} bytes) at {addr:#x}: {}",
                            std::io::Error::last_os_error()
                        ));
                    }
                    for r in runs {
                        // SAFETY: the run lies inside the object (validated),
                        // which is mapped read-write at `addr` just above.
                        let dst = unsafe {
                            std::slice::from_raw_parts_mut(
                                (addr + r.addr) as *mut u8,
                                (r.npages * PAGE_SIZE) as usize,
                            )
                        };
                        pages.read_exact_at(dst, r.offset).map_err(|e| {
                            format!("filling shared memory object {id} from shmem.img: {e}")
                        })?;
                    }
                }
                SharedObjectKind::Sysv { shmid } => {
                    // SAFETY: attaching a segment at an address planned free;
                    // the kernel refuses an unaligned or taken one (no SHM_REMAP).
                    let got = unsafe { libc::shmat(*shmid, addr as *const libc::c_void, 0) };
                    if got as u64 != addr {
                        return Err(format!(
                            "attaching SysV segment {shmid} at {addr:#x}: {}",
                            std::io::Error::last_os_error()
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Run in init once the tree is forked: init lets go of every object
    /// (the tree holds them now).
    pub fn release(&self) {
        for &(addr, len) in self.places.values() {
            // SAFETY: unmapping what `materialize` mapped in this process.
            unsafe { libc::munmap(addr as *mut libc::c_void, len as usize) };
        }
    }

    /// The ranges a process must keep while its address space is rebuilt:
    /// the objects its areas map.
    pub fn keep_for(&self, vmas: &[Vma]) -> Vec<(u32, u64, u64)> {
        let mut ids: Vec<u32> = vmas
            .iter()
            .filter_map(|v| v.shared_object.map(|s| s.object))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids.iter()
            .filter_map(|id| self.places.get(id).map(|&(a, l)| (*id, a, l)))
            .collect()
    }
}

const MREMAP_MAYMOVE: u64 = 1;
const MREMAP_FIXED: u64 = 2;

/// Maps area `v` as a new mapping of the pages of the object it refers to,
/// which the task holds at `base` (inherited from init).
pub fn map_area(r: &mut Remote, v: &Vma, sr: SharedRef, base: u64) -> Result<()> {
    let len = v.end - v.start;
    let got = r.call(
        &format!(
            "mremap of shared memory object {} onto area {:#x}-{:#x}",
            sr.object, v.start, v.end
        ),
        libc::SYS_mremap,
        [
            base + sr.offset,
            0,
            len,
            MREMAP_MAYMOVE | MREMAP_FIXED,
            v.start,
            0,
        ],
    )?;
    if got != v.start {
        return Err(perr(
            r.tid,
            format!("area {:#x} mapped at {got:#x}", v.start),
        ));
    }
    let rw = (libc::PROT_READ | libc::PROT_WRITE) as u32;
    if v.prot != rw {
        r.call(
            &format!("mprotect of area {:#x}-{:#x}", v.start, v.end),
            libc::SYS_mprotect,
            [v.start, len, v.prot as u64, 0, 0, 0],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_shared_object("/dev/zero (deleted)"));
        assert!(is_shared_object("/SYSV0000162e (deleted)"));
        assert!(!is_shared_object("/dev/zero"));
        assert!(!is_shared_object("/SYSV0000162e"));
        assert!(!is_shared_object("/memfd:x (deleted)"));
    }

    #[test]
    fn holes_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.set_len(16 * PAGE_SIZE).unwrap();
        f.write_all_at(b"x", 3 * PAGE_SIZE + 5).unwrap();
        f.write_all_at(b"y", 9 * PAGE_SIZE).unwrap();
        let r = data_ranges(&f, 16 * PAGE_SIZE).unwrap();
        // File systems may report larger data extents, never fewer.
        assert!(r
            .iter()
            .any(|&(s, e)| s <= 3 * PAGE_SIZE && e >= 4 * PAGE_SIZE));
        assert!(r
            .iter()
            .any(|&(s, e)| s <= 9 * PAGE_SIZE && e >= 10 * PAGE_SIZE));
        assert!(r
            .iter()
            .all(|&(s, e)| s % PAGE_SIZE == 0 && e % PAGE_SIZE == 0 && s < e));
    }
}
