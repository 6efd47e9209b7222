//! The image directory: files written with their checksums, the manifest last;
//! files read back only after their size and checksum are verified.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::hash::Checksum;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{
    limits, CpuFeatures, FileEntry, Manifest, FORMAT_MINOR, FORMAT_VERSION, IGNORABLE,
    LEGACY_FORMAT_VERSION, MAGIC,
};
use crate::error::{io, Error, Result};

const MANIFEST: &str = "manifest.json";

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::BadImage {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Writes an image. Dropped without `finish`, it removes what it wrote.
pub struct ImageWriter {
    dir: PathBuf,
    created_dir: bool,
    entries: BTreeMap<String, FileEntry>,
    written: Vec<PathBuf>,
    finished: bool,
}

/// A file of the image being written, hashed as it is written.
pub struct PageSink {
    name: String,
    file: File,
    hasher: Box<Checksum>,
    size: u64,
}

impl PageSink {
    pub fn write_all(&mut self, buf: &[u8]) -> Result<()> {
        self.file
            .write_all(buf)
            .map_err(io(format!("writing image file {}", self.name)))?;
        self.hasher.update(buf);
        self.size += buf.len() as u64;
        Ok(())
    }

    /// Bytes written so far: the offset the next write lands at.
    pub fn position(&self) -> u64 {
        self.size
    }

    /// A second handle on the file, for writes at offsets that a later
    /// `append_in_place` covers (its windows then see those bytes and hash
    /// them with the rest).
    pub fn try_clone_file(&self) -> Result<File> {
        self.file
            .try_clone()
            .map_err(io(format!("duplicating image file {}", self.name)))
    }

    /// Appends `len` bytes produced in place: the file is extended, mapped
    /// window by window (at most `window` bytes, page-aligned), and `fill`
    /// writes each window directly, given its offset from the start of this
    /// append. One copy from the source into the file's pages, and the
    /// memory used is one window whatever `len` is. The current position
    /// must be page-aligned (page files hold whole pages only).
    pub fn append_in_place(
        &mut self,
        len: u64,
        window: usize,
        mut fill: impl FnMut(u64, &mut [u8]) -> Result<()>,
    ) -> Result<()> {
        use std::os::fd::AsRawFd;
        if len == 0 {
            return Ok(());
        }
        let page = super::PAGE_SIZE;
        debug_assert!(self.size.is_multiple_of(page) && (window as u64).is_multiple_of(page));
        let start = self.size;
        self.file
            .set_len(start + len)
            .map_err(io(format!("extending image file {}", self.name)))?;
        // The blocks are reserved before the file is written through a
        // mapping: a full disk is then an error here, not a SIGBUS later.
        // SAFETY: fallocate on our own file, within its length.
        let rc = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                0,
                start as libc::off_t,
                len as libc::off_t,
            )
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
                return Err(io(format!(
                    "reserving {len} bytes in image file {}",
                    self.name
                ))(e));
            }
        }
        let mut done = 0u64;
        while done < len {
            let n = ((len - done) as usize).min(window);
            // SAFETY: a shared read-write mapping of `n` bytes of our own image
            // file, inside the length just set; only used as a byte slice below
            // and unmapped before the next window.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    n,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    self.file.as_raw_fd(),
                    (start + done) as libc::off_t,
                )
            };
            if p == libc::MAP_FAILED {
                return Err(io(format!("mapping image file {}", self.name))(
                    std::io::Error::last_os_error(),
                ));
            }
            struct Unmap(*mut libc::c_void, usize);
            impl Drop for Unmap {
                fn drop(&mut self) {
                    // SAFETY: unmapping the window mapped above.
                    unsafe { libc::munmap(self.0, self.1) };
                }
            }
            let _unmap = Unmap(p, n);
            // Allocate the window's pages in one go rather than one fault
            // each. Where fallocate is not supported, this is also where a
            // full disk shows (EFAULT/ENOMEM: writing would raise SIGBUS).
            // SAFETY: madvise on the mapping above.
            let rc = unsafe {
                libc::madvise(p, n, 23 /* MADV_POPULATE_WRITE */)
            };
            if rc != 0 {
                let e = std::io::Error::last_os_error();
                if matches!(e.raw_os_error(), Some(libc::EFAULT | libc::ENOMEM)) {
                    return Err(io(format!(
                        "writing image file {} (no space left?)",
                        self.name
                    ))(e));
                }
            }
            // SAFETY: `p` is a valid mapping of `n` bytes, exclusively ours.
            let buf = unsafe { std::slice::from_raw_parts_mut(p as *mut u8, n) };
            fill(done, buf)?;
            self.hasher.update(buf);
            done += n as u64;
        }
        self.size = start + len;
        Ok(())
    }

    /// Appends `len` bytes produced by `fill`, given a page-aligned buffer and
    /// its offset from the start of this append. Large appends run as a
    /// pipeline on two threads: this thread fills and hashes one buffer while
    /// a writer thread `write()`s the previous one. A plain write into tmpfs
    /// allocates the file's pages without zeroing them (a mapping of the file
    /// would zero each page first), and the small buffers stay in the cache
    /// between the copy in and the copy out. The writer thread exists only
    /// inside this call (scoped, joined before it returns). The memory used
    /// is a few buffers whatever `len` is.
    pub fn append_streamed(
        &mut self,
        len: u64,
        mut fill: impl FnMut(u64, &mut [u8]) -> Result<()>,
    ) -> Result<()> {
        use crate::memory::buf::AlignedBuf;
        use std::sync::mpsc;
        if len == 0 {
            return Ok(());
        }
        let name = &self.name;
        if len <= STREAM_PIPELINE_MIN {
            return self.append_direct(len, fill);
        }
        // Filled buffers go to the writer; written (or failed) ones come back.
        let (to_writer, filled) = mpsc::sync_channel::<(AlignedBuf, usize)>(STREAM_BUFS);
        let (to_filler, free) = mpsc::sync_channel::<std::io::Result<AlignedBuf>>(STREAM_BUFS);
        for _ in 0..STREAM_BUFS {
            to_filler
                .send(Ok(AlignedBuf::new(STREAM_BUF)?))
                .expect("the channel holds every buffer");
        }
        // The writer stops at its first failed write, after handing the error
        // back: that error is the cause to report.
        let writer_stopped = |free: &mpsc::Receiver<std::io::Result<AlignedBuf>>| {
            free.try_iter()
                .find_map(|r| r.err())
                .map(|e| io(format!("writing image file {name}"))(e))
                .unwrap_or_else(|| {
                    Error::Other(format!(
                        "writing image file {name}: the writer thread stopped"
                    ))
                })
        };
        let file = &self.file;
        let hasher = &mut self.hasher;
        let (res, writer) = std::thread::scope(|s| {
            let writer = s.spawn(move || {
                for (buf, n) in filled {
                    let r = (&*file).write_all(&buf[..n]).map(|()| buf);
                    let failed = r.is_err();
                    if to_filler.send(r).is_err() || failed {
                        return;
                    }
                }
            });
            let res = (|| -> Result<()> {
                let mut done = 0u64;
                while done < len {
                    let mut buf = match free.recv() {
                        Ok(Ok(b)) => b,
                        Ok(Err(e)) => return Err(io(format!("writing image file {name}"))(e)),
                        Err(_) => return Err(writer_stopped(&free)),
                    };
                    let n = ((len - done) as usize).min(buf.len());
                    fill(done, &mut buf[..n])?;
                    hasher.update(&buf[..n]);
                    to_writer
                        .send((buf, n))
                        .map_err(|_| writer_stopped(&free))?;
                    done += n as u64;
                }
                Ok(())
            })();
            drop(to_writer);
            (res, writer.join())
        });
        res?;
        if writer.is_err() {
            return Err(Error::Other(format!(
                "writing image file {name}: the writer thread panicked"
            )));
        }
        // A write error after the last buffer was handed over.
        for r in free.try_iter() {
            r.map_err(io(format!("writing image file {name}")))?;
        }
        self.size += len;
        Ok(())
    }
}

impl PageSink {
    /// Appends `len` bytes produced by `fill` (as `append_streamed`) on this
    /// thread alone: fill a small page-aligned buffer, hash it, write it.
    /// For callers that already run one such stream per core.
    pub fn append_direct(
        &mut self,
        len: u64,
        mut fill: impl FnMut(u64, &mut [u8]) -> Result<()>,
    ) -> Result<()> {
        use crate::memory::buf::AlignedBuf;
        if len == 0 {
            return Ok(());
        }
        let mut buf = AlignedBuf::new((len as usize).min(STREAM_BUF))?;
        let mut done = 0u64;
        while done < len {
            let n = ((len - done) as usize).min(buf.len());
            fill(done, &mut buf[..n])?;
            self.hasher.update(&buf[..n]);
            (&self.file)
                .write_all(&buf[..n])
                .map_err(io(format!("writing image file {}", self.name)))?;
            done += n as u64;
        }
        self.size += len;
        Ok(())
    }
}

/// Appends at most this long run on one thread (a second thread does not pay
/// for itself on small page files).
const STREAM_PIPELINE_MIN: u64 = 4 << 20;
/// Size of one stream buffer. Measured on dumps of 1 GiB (two page-file
/// threads, 6 alternating runs each): 1 MiB buffers fill and write about
/// 7% faster than 256 KiB ones (fewer calls, each `process_vm_readv` and
/// `write` covering more pages), 512 KiB in between.
const STREAM_BUF: usize = 1 << 20;
/// Buffers in flight between the filling and the writing thread.
const STREAM_BUFS: usize = 4;

impl ImageWriter {
    /// Creates the image directory (0700), or takes an existing empty one.
    pub fn create(dir: &Path) -> Result<Self> {
        let created_dir = match fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let mut entries =
                    fs::read_dir(dir).map_err(io(format!("image directory {}", dir.display())))?;
                if entries.next().is_some() {
                    return Err(bad(
                        dir,
                        "directory is not empty (refusing to overwrite an image)",
                    ));
                }
                fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                    .map_err(io(format!("chmod image directory {}", dir.display())))?;
                false
            }
            Err(e) => return Err(io(format!("creating image directory {}", dir.display()))(e)),
        };
        Ok(ImageWriter {
            dir: dir.to_path_buf(),
            created_dir,
            entries: BTreeMap::new(),
            written: Vec::new(),
            finished: false,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the writer made the image directory (rather than taking an
    /// empty one).
    pub fn created_dir(&self) -> bool {
        self.created_dir
    }

    /// Opens a new file of the image for streaming.
    pub fn create_file(&mut self, name: &str) -> Result<PageSink> {
        let path = self.dir.join(name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io(format!("creating image file {}", path.display())))?;
        self.written.push(path);
        Ok(PageSink {
            name: name.to_string(),
            file,
            hasher: Box::new(Checksum::new()),
            size: 0,
        })
    }

    /// Closes a streamed file and records its size and checksum.
    pub fn commit_file(&mut self, sink: PageSink) -> Result<u64> {
        sink.file
            .sync_data()
            .map_err(io(format!("syncing image file {}", sink.name)))?;
        let size = sink.size;
        self.entries.insert(
            sink.name,
            FileEntry {
                size,
                xxh3: format!("{:016x}", sink.hasher.digest()),
            },
        );
        Ok(size)
    }

    pub fn write_json<T: Serialize>(&mut self, name: &str, value: &T) -> Result<()> {
        let bytes =
            serde_json::to_vec(value).map_err(|e| Error::Other(format!("encoding {name}: {e}")))?;
        let mut sink = self.create_file(name)?;
        sink.write_all(&bytes)?;
        self.commit_file(sink)?;
        Ok(())
    }

    /// Total bytes of the files written so far.
    pub fn bytes(&self) -> u64 {
        self.entries.values().map(|e| e.size).sum()
    }

    /// Writes the manifest (atomically, last): from now on the image is valid.
    pub fn finish(mut self, cpu: CpuFeatures) -> Result<u64> {
        let manifest = Manifest {
            magic: MAGIC.to_string(),
            format_version: FORMAT_VERSION,
            format_minor: FORMAT_MINOR,
            ignorable: IGNORABLE.iter().map(|s| s.to_string()).collect(),
            stasis_version: env!("CARGO_PKG_VERSION").to_string(),
            kernel_release: kernel_release(),
            arch: std::env::consts::ARCH.to_string(),
            cpu,
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            files: std::mem::take(&mut self.entries),
        };
        let total = manifest.files.values().map(|e| e.size).sum::<u64>();
        let tmp = self.dir.join(".manifest.json.tmp");
        let bytes = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| Error::Other(format!("encoding manifest: {e}")))?;
        {
            self.written.push(tmp.clone());
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io(format!("creating {}", tmp.display())))?;
            f.write_all(&bytes)
                .and_then(|_| f.sync_all())
                .map_err(io(format!("writing {}", tmp.display())))?;
        }
        let dst = self.dir.join(MANIFEST);
        fs::rename(&tmp, &dst).map_err(io(format!("renaming {}", dst.display())))?;
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        self.finished = true;
        Ok(total + bytes.len() as u64)
    }
}

impl Drop for ImageWriter {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        for p in &self.written {
            let _ = fs::remove_file(p);
        }
        if self.created_dir {
            let _ = fs::remove_dir(&self.dir);
        }
    }
}

pub fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Reads a verified image.
pub struct ImageReader {
    dir: PathBuf,
    manifest: Manifest,
}

impl ImageReader {
    /// Opens an image: checks ownership and permissions, the manifest's magic,
    /// version and architecture. File contents are verified by `verify_all`.
    pub fn open(dir: &Path) -> Result<Self> {
        let meta = fs::metadata(dir).map_err(io(format!("image directory {}", dir.display())))?;
        if !meta.is_dir() {
            return Err(bad(dir, "not a directory"));
        }
        check_owner_mode(dir, &meta)?;
        let mpath = dir.join(MANIFEST);
        let bytes = read_bounded(&mpath, limits::MAX_MANIFEST_BYTES)?;
        // The version first, from the fields every version has: a manifest
        // of a newer format may hold fields this one does not know.
        #[derive(serde::Deserialize)]
        struct Head {
            magic: String,
            format_version: u32,
            #[serde(default)]
            format_minor: u32,
            #[serde(default)]
            stasis_version: String,
        }
        let head: Head = serde_json::from_slice(&bytes)
            .map_err(|e| bad(&mpath, format!("not a stasis manifest: {e}")))?;
        if head.magic != MAGIC {
            return Err(bad(&mpath, format!("bad magic {:?}", head.magic)));
        }
        let (major, minor) = (head.format_version, head.format_minor);
        let known_major = major == FORMAT_VERSION || (major == LEGACY_FORMAT_VERSION && minor == 0);
        if !known_major {
            return Err(bad(
                &mpath,
                format!(
                    "format version {major}.{minor} (made by stasis {}); this stasis {} reads versions {LEGACY_FORMAT_VERSION} and {FORMAT_VERSION}.0 to {FORMAT_VERSION}.{FORMAT_MINOR}",
                    head.stasis_version,
                    env!("CARGO_PKG_VERSION"),
                ),
            ));
        }
        // Every field of the manifest must be known, but those a newer
        // minor declares ignorable.
        let v: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| bad(&mpath, format!("not a stasis manifest: {e}")))?;
        let ignorable: Vec<String> = if major == FORMAT_VERSION && minor > FORMAT_MINOR {
            v.get("ignorable")
                .and_then(|i| serde_json::from_value(i.clone()).ok())
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let manifest: Manifest = decode_newer(&mpath, MANIFEST, &bytes, &ignorable, major, minor)?;
        if manifest.arch != std::env::consts::ARCH {
            return Err(bad(
                &mpath,
                format!(
                    "made on {}, this is {}",
                    manifest.arch,
                    std::env::consts::ARCH
                ),
            ));
        }
        for name in manifest.files.keys() {
            if name.contains('/') || name.starts_with('.') || name == MANIFEST {
                return Err(bad(&mpath, format!("bad file name {name:?}")));
            }
        }
        Ok(ImageReader {
            dir: dir.to_path_buf(),
            manifest,
        })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Verifies every file's ownership, permissions, size and checksum.
    pub fn verify_all(&self) -> Result<()> {
        self.verify_all_except(&BTreeSet::new())
    }

    /// Verifies every file; of those in `streamed` (page files the memory
    /// restore reads whole and verifies as it goes: `open_streamed`), only
    /// the ownership, permissions and size.
    pub fn verify_all_except(&self, streamed: &BTreeSet<String>) -> Result<()> {
        for (name, entry) in &self.manifest.files {
            let path = self.dir.join(name);
            let f = self.open_checked(name)?;
            if streamed.contains(name) {
                continue;
            }
            let sum = format!(
                "{:016x}",
                hash_file(&f, entry.size).map_err(io(format!("reading {}", path.display())))?
            );
            if sum != entry.xxh3 {
                return Err(bad(
                    &path,
                    format!(
                        "checksum mismatch (xxh3 {sum}, manifest says {})",
                        entry.xxh3
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Opens a file listed in the manifest, checking its owner, mode and size.
    pub fn open_checked(&self, name: &str) -> Result<File> {
        let path = self.dir.join(name);
        let entry = self
            .manifest
            .files
            .get(name)
            .ok_or_else(|| bad(&path, "missing from the manifest"))?;
        let f = File::open(&path).map_err(io(format!("opening {}", path.display())))?;
        let meta = f
            .metadata()
            .map_err(io(format!("stat {}", path.display())))?;
        check_owner_mode(&path, &meta)?;
        if meta.len() != entry.size {
            return Err(bad(
                &path,
                format!(
                    "size {}, manifest says {} (truncated?)",
                    meta.len(),
                    entry.size
                ),
            ));
        }
        Ok(f)
    }

    /// Opens a file listed in the manifest (owner, mode and size checked) to
    /// be read whole, once, by `StreamedFile::read_verified`.
    pub fn open_streamed(&self, name: &str) -> Result<StreamedFile> {
        let file = self.open_checked(name)?;
        let entry = &self.manifest.files[name];
        Ok(StreamedFile {
            path: self.dir.join(name),
            file,
            size: entry.size,
            xxh3: entry.xxh3.clone(),
        })
    }

    /// Size of a file as the manifest records it.
    pub fn file_size(&self, name: &str) -> Option<u64> {
        self.manifest.files.get(name).map(|e| e.size)
    }

    /// Reads and decodes a JSON file, verifying its checksum.
    pub fn read_json<T: DeserializeOwned + Serialize>(&self, name: &str) -> Result<T> {
        let path = self.dir.join(name);
        let entry = self
            .manifest
            .files
            .get(name)
            .ok_or_else(|| bad(&path, "missing from the manifest"))?;
        if entry.size > limits::MAX_JSON_BYTES {
            return Err(bad(
                &path,
                format!("metadata of {} bytes is too large", entry.size),
            ));
        }
        let mut f = self.open_checked(name)?;
        let mut bytes = Vec::with_capacity(entry.size as usize);
        (&mut f)
            .take(entry.size + 1)
            .read_to_end(&mut bytes)
            .map_err(io(format!("reading {}", path.display())))?;
        let sum = format!("{:016x}", super::hash::xxh3_64(&bytes));
        if bytes.len() as u64 != entry.size || sum != entry.xxh3 {
            return Err(bad(&path, "checksum mismatch"));
        }
        let m = &self.manifest;
        if m.format_version == FORMAT_VERSION && m.format_minor > FORMAT_MINOR {
            return decode_newer(
                &path,
                name,
                &bytes,
                &m.ignorable,
                m.format_version,
                m.format_minor,
            );
        }
        serde_json::from_slice(&bytes).map_err(|e| bad(&path, format!("cannot decode: {e}")))
    }
}

/// Decodes `raw`, the JSON of image file `name` made by a newer minor of
/// this format, refusing it when it holds a field this stasis does not know
/// and the image does not declare ignorable (`file-pattern:key` in
/// `ignorable`, the pattern a file name with at most one `*`).
fn decode_newer<T: DeserializeOwned + Serialize>(
    path: &Path,
    name: &str,
    bytes: &[u8],
    ignorable: &[String],
    major: u32,
    minor: u32,
) -> Result<T> {
    // Decoded from the bytes (some fields borrow their strings), and read
    // once more as a plain JSON value to find the fields the decode skipped.
    let value: T =
        serde_json::from_slice(bytes).map_err(|e| bad(path, format!("cannot decode: {e}")))?;
    let raw: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| bad(path, format!("cannot decode: {e}")))?;
    let known =
        serde_json::to_value(&value).map_err(|e| bad(path, format!("cannot encode again: {e}")))?;
    let mut unknown = Vec::new();
    unknown_fields(&raw, &known, "", &mut unknown);
    let declared = |key: &str| {
        ignorable.iter().any(|d| {
            d.rsplit_once(':')
                .is_some_and(|(pat, k)| k == key && file_matches(pat, name))
        })
    };
    if let Some((at, key)) = unknown.iter().find(|(_, key)| !declared(key)) {
        return Err(bad(
            path,
            format!(
                "format version {major}.{minor} adds field {at} that this stasis {} (format {FORMAT_VERSION}.{FORMAT_MINOR}) does not know, and the image does not declare `{name}:{key}` ignorable: restore it with a newer stasis",
                env!("CARGO_PKG_VERSION"),
            ),
        ));
    }
    Ok(value)
}

fn file_matches(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((pre, post)) => {
            name.len() >= pre.len() + post.len() && name.starts_with(pre) && name.ends_with(post)
        }
    }
}

/// Keys of `raw` (at any depth) that a decode and encode again did not
/// keep: (their path, their key). A key the encoding leaves out when it
/// holds its default (absent, null, false, 0, empty) counts as kept.
fn unknown_fields(
    raw: &serde_json::Value,
    known: &serde_json::Value,
    at: &str,
    out: &mut Vec<(String, String)>,
) {
    use serde_json::Value;
    match (raw, known) {
        (Value::Object(r), Value::Object(k)) => {
            for (key, rv) in r {
                let here = if at.is_empty() {
                    key.clone()
                } else {
                    format!("{at}.{key}")
                };
                match k.get(key) {
                    Some(kv) => unknown_fields(rv, kv, &here, out),
                    None => {
                        let default = match rv {
                            Value::Null => true,
                            Value::Bool(b) => !b,
                            Value::Number(n) => n.as_f64() == Some(0.0),
                            Value::String(s) => s.is_empty(),
                            Value::Array(a) => a.is_empty(),
                            Value::Object(o) => o.is_empty(),
                        };
                        if !default {
                            out.push((here, key.clone()));
                        }
                    }
                }
            }
        }
        (Value::Array(r), Value::Array(k)) => {
            for (i, (rv, kv)) in r.iter().zip(k).enumerate() {
                unknown_fields(rv, kv, &format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// An image file read from its first byte to its last and verified on the
/// way: whoever reads it uses the bytes before the checksum is known, and
/// must undo what it did with them when `read_verified` fails.
pub struct StreamedFile {
    path: PathBuf,
    file: File,
    size: u64,
    xxh3: String,
}

impl StreamedFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size the manifest records (and the file had when opened).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The file, for reads after `read_verified` succeeded.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Reads the whole file in order through `buf` (pread), hashing every
    /// byte, handing each piece and its offset to `each`; then compares the
    /// size read and the checksum with the manifest's. A mismatch is
    /// `Error::BadImage` naming the file.
    pub fn read_verified(
        &self,
        buf: &mut [u8],
        mut each: impl FnMut(u64, &[u8]) -> Result<()>,
    ) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let mut h = Checksum::new();
        let mut at = 0u64;
        while at < self.size {
            let want = ((self.size - at) as usize).min(buf.len());
            let n = self
                .file
                .read_at(&mut buf[..want], at)
                .map_err(io(format!("reading {}", self.path.display())))?;
            if n == 0 {
                return Err(bad(
                    &self.path,
                    format!(
                        "ends at {at} bytes, manifest says {} (truncated?)",
                        self.size
                    ),
                ));
            }
            h.update(&buf[..n]);
            each(at, &buf[..n])?;
            at += n as u64;
        }
        // Nothing past the recorded size either.
        let mut one = [0u8; 1];
        let more = self
            .file
            .read_at(&mut one, at)
            .map_err(io(format!("reading {}", self.path.display())))?;
        if more != 0 {
            return Err(bad(
                &self.path,
                format!("longer than the {} bytes the manifest says", self.size),
            ));
        }
        let sum = format!("{:016x}", h.digest());
        if sum != self.xxh3 {
            return Err(bad(
                &self.path,
                format!(
                    "checksum mismatch (xxh3 {sum}, manifest says {})",
                    self.xxh3
                ),
            ));
        }
        Ok(())
    }
}

/// xxh3 of the first `size` bytes of `f`, read through windows of a mapping
/// (no copy into a buffer; the windows are dropped as they are done).
fn hash_file(f: &File, size: u64) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    // Small windows: the memory used stays bounded whatever the file size.
    const WINDOW: u64 = 4 << 20;
    let mut h = Checksum::new();
    let mut done = 0u64;
    while done < size {
        let n = (size - done).min(WINDOW) as usize;
        // SAFETY: a private read-only mapping of `n` bytes of a file we hold,
        // inside its size (checked by the caller); unmapped below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                n,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                f.as_raw_fd(),
                done as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: advice on the mapping above (failure only costs speed); the
        // slice covers exactly the mapping, which is unmapped after use.
        unsafe {
            libc::madvise(p, n, 22 /* MADV_POPULATE_READ */);
            h.update(std::slice::from_raw_parts(p as *const u8, n));
            libc::munmap(p, n);
        }
        done += n as u64;
    }
    Ok(h.digest())
}

fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>> {
    let f = File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            bad(path, "no manifest: not a complete stasis image")
        } else {
            io(format!("opening {}", path.display()))(e)
        }
    })?;
    let meta = f
        .metadata()
        .map_err(io(format!("stat {}", path.display())))?;
    check_owner_mode(path, &meta)?;
    if meta.len() > max {
        return Err(bad(
            path,
            format!("{} bytes, more than the {max} allowed", meta.len()),
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    f.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(io(format!("reading {}", path.display())))?;
    Ok(bytes)
}

/// An image holds the workload's memory, secrets included: it must belong to
/// the user restoring it and be closed to everyone else.
fn check_owner_mode(path: &Path, meta: &fs::Metadata) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != euid {
        return Err(bad(
            path,
            format!(
                "owned by uid {}, not by uid {euid} who restores it",
                meta.uid()
            ),
        ));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(bad(
            path,
            format!(
                "mode {:o} lets other users read or change it (want 0600 files, 0700 directory)",
                meta.mode() & 0o777
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu() -> CpuFeatures {
        CpuFeatures {
            xcr0: 0xe7,
            xstate_size: 2432,
        }
    }

    #[test]
    fn roundtrip_and_corruption() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("img");
        let mut w = ImageWriter::create(&dir).unwrap();
        w.write_json("a.json", &vec![1u32, 2, 3]).unwrap();
        let mut s = w.create_file("pages-1.img").unwrap();
        s.write_all(&[7u8; 8192]).unwrap();
        w.commit_file(s).unwrap();
        w.finish(cpu()).unwrap();

        let r = ImageReader::open(&dir).unwrap();
        r.verify_all().unwrap();
        let v: Vec<u32> = r.read_json("a.json").unwrap();
        assert_eq!(v, vec![1, 2, 3]);

        // One flipped byte in the page file is caught.
        let p = dir.join("pages-1.img");
        let mut bytes = fs::read(&p).unwrap();
        bytes[4000] ^= 1;
        fs::write(&p, &bytes).unwrap();
        let err = ImageReader::open(&dir).unwrap().verify_all().unwrap_err();
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
    }

    #[test]
    fn streamed_file_is_verified_as_it_is_read() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("img");
        let mut w = ImageWriter::create(&dir).unwrap();
        let mut s = w.create_file("pages-2-1.img").unwrap();
        let data: Vec<u8> = (0..3 * 4096 + 100).map(|i| (i * 7 % 251) as u8).collect();
        s.write_all(&data).unwrap();
        w.commit_file(s).unwrap();
        w.finish(cpu()).unwrap();
        let r = ImageReader::open(&dir).unwrap();
        // Every byte handed over, in order, through a buffer smaller than the file.
        let mut buf = vec![0u8; 4096];
        let mut seen = Vec::new();
        r.open_streamed("pages-2-1.img")
            .unwrap()
            .read_verified(&mut buf, |at, b| {
                assert_eq!(at, seen.len() as u64);
                seen.extend_from_slice(b);
                Ok(())
            })
            .unwrap();
        assert_eq!(seen, data);
        // A flipped byte: the whole file is read, then refused by name.
        let p = dir.join("pages-2-1.img");
        let mut bytes = fs::read(&p).unwrap();
        bytes[5000] ^= 1;
        fs::write(&p, &bytes).unwrap();
        let mut n = 0;
        let err = r
            .open_streamed("pages-2-1.img")
            .unwrap()
            .read_verified(&mut buf, |_, b| {
                n += b.len();
                Ok(())
            })
            .unwrap_err()
            .to_string();
        assert_eq!(n, data.len());
        assert!(
            err.contains("checksum mismatch") && err.contains("pages-2-1.img"),
            "{err}"
        );
        // Grown after it was opened: refused too.
        bytes[5000] ^= 1;
        fs::write(&p, &bytes).unwrap();
        let f = r.open_streamed("pages-2-1.img").unwrap();
        let mut longer = bytes.clone();
        longer.push(0);
        fs::write(&p, &longer).unwrap();
        let err = f.read_verified(&mut buf, |_, _| Ok(())).unwrap_err();
        assert!(err.to_string().contains("longer than"), "{err}");
    }

    #[derive(Debug, serde::Serialize, serde::Deserialize, PartialEq)]
    struct Rec {
        a: u32,
        #[serde(default)]
        inner: Vec<Inner>,
    }

    #[derive(Debug, serde::Serialize, serde::Deserialize, PartialEq)]
    struct Inner {
        b: u32,
    }

    /// Rewrites `name` of the image at `dir` with `value` (size and checksum
    /// made right) and changes the manifest with `edit`.
    fn rewrite(
        dir: &Path,
        name: &str,
        value: &serde_json::Value,
        edit: impl FnOnce(&mut serde_json::Value),
    ) {
        let bytes = serde_json::to_vec(value).unwrap();
        fs::write(dir.join(name), &bytes).unwrap();
        let mp = dir.join(MANIFEST);
        let mut m: serde_json::Value = serde_json::from_slice(&fs::read(&mp).unwrap()).unwrap();
        m["files"][name]["size"] = bytes.len().into();
        m["files"][name]["xxh3"] = format!("{:016x}", crate::image::xxh3_64(&bytes)).into();
        edit(&mut m);
        fs::write(&mp, serde_json::to_vec(&m).unwrap()).unwrap();
    }

    #[test]
    fn versions_major_minor_and_ignorable_fields() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("img");
        let mut w = ImageWriter::create(&dir).unwrap();
        let rec = Rec {
            a: 1,
            inner: vec![Inner { b: 2 }],
        };
        w.write_json("r.json", &rec).unwrap();
        w.finish(cpu()).unwrap();
        let r = ImageReader::open(&dir).unwrap();
        assert_eq!(r.manifest().format_version, FORMAT_VERSION);
        assert_eq!(r.manifest().format_minor, FORMAT_MINOR);
        assert_eq!(r.read_json::<Rec>("r.json").unwrap(), rec);

        // A field from a newer minor: refused, naming both versions and the field.
        let future = serde_json::json!({ "a": 1, "inner": [{ "b": 2, "from_the_future": 7 }] });
        let newer = FORMAT_MINOR + 1;
        rewrite(&dir, "r.json", &future, |m| {
            m["format_minor"] = newer.into()
        });
        let r = ImageReader::open(&dir).unwrap();
        let err = r.read_json::<Rec>("r.json").unwrap_err().to_string();
        let here = format!("format {FORMAT_VERSION}.{FORMAT_MINOR}");
        let there = format!("format version {FORMAT_VERSION}.{newer}");
        assert!(
            err.contains(&here)
                && err.contains(&there)
                && err.contains("inner[0].from_the_future")
                && err.contains("r.json"),
            "{err}"
        );
        // Declared ignorable (for this file): read, the field ignored.
        rewrite(&dir, "r.json", &future, |m| {
            m["ignorable"] = serde_json::json!(["r*.json:from_the_future"])
        });
        let r = ImageReader::open(&dir).unwrap();
        assert_eq!(r.read_json::<Rec>("r.json").unwrap(), rec);
        // Declared for another file only: refused.
        rewrite(&dir, "r.json", &future, |m| {
            m["ignorable"] = serde_json::json!(["proc-*.json:from_the_future"])
        });
        let r = ImageReader::open(&dir).unwrap();
        assert!(r.read_json::<Rec>("r.json").is_err());
        // The same minor with a field this stasis knows nothing of, in the
        // manifest itself: refused before anything is read.
        rewrite(&dir, "r.json", &serde_json::to_value(&rec).unwrap(), |m| {
            m["ignorable"] = serde_json::json!([]);
            m["future_key"] = "x".into();
        });
        let err = ImageReader::open(&dir).err().unwrap().to_string();
        assert!(err.contains("future_key") && err.contains(&there), "{err}");

        // A newer major: refused whatever it declares, naming the versions.
        rewrite(&dir, "r.json", &serde_json::to_value(&rec).unwrap(), |m| {
            m.as_object_mut().unwrap().remove("future_key");
            m["format_version"] = (FORMAT_VERSION + 1).into();
            m["format_minor"] = 0.into();
        });
        let err = ImageReader::open(&dir).err().unwrap().to_string();
        assert!(
            err.contains(&format!("format version {}.0", FORMAT_VERSION + 1))
                && err.contains(&format!("{FORMAT_VERSION}.{FORMAT_MINOR}")),
            "{err}"
        );
        // The legacy major (no minor in its manifest): read as before.
        rewrite(&dir, "r.json", &serde_json::to_value(&rec).unwrap(), |m| {
            m["format_version"] = LEGACY_FORMAT_VERSION.into();
            m.as_object_mut().unwrap().remove("format_minor");
        });
        let r = ImageReader::open(&dir).unwrap();
        assert_eq!(r.read_json::<Rec>("r.json").unwrap(), rec);
    }

    #[test]
    fn dropped_writer_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("img");
        {
            let mut w = ImageWriter::create(&dir).unwrap();
            w.write_json("a.json", &1u32).unwrap();
        }
        assert!(!dir.exists());
        assert!(ImageReader::open(&dir).is_err());
    }

    #[test]
    fn refuses_loose_permissions_and_missing_manifest() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("img");
        let w = ImageWriter::create(&dir).unwrap();
        w.finish(cpu()).unwrap();
        fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let err = ImageReader::open(&dir).err().unwrap();
        assert!(err.to_string().contains("mode 755"), "{err}");
        fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        fs::remove_file(dir.join(MANIFEST)).unwrap();
        let err = ImageReader::open(&dir).err().unwrap();
        assert!(err.to_string().contains("no manifest"), "{err}");
    }
}
