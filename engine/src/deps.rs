//! Host files an image depends on without holding them: executables and
//! libraries the processes map, files and directories they hold open by path
//! outside the sandbox's private tmpfs mounts. The dump records what each
//! was (type, size, and for mapped files a digest of the contents); a restore
//! compares every one of them with what the host has now and refuses, before
//! anything is created, an image whose files are missing or changed, naming
//! each file and how it differs. A mapped executable replaced by another file
//! would otherwise be mapped under the old process's registers and crash it.
//!
//! Digests are cached per host file in the state directory
//! (`file-digests.json`), keyed by device, inode, size, mtime and ctime, so an
//! unchanged library is read once, not on every dump and restore.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::image::{FileKind, FilesImage, ProcessImage, VmaKind};

/// The image file holding [`DepsImage`].
pub const FILE: &str = "deps.json";

/// Most host files one image may name (bounded on load).
pub const MAX_FILES: usize = 100_000;

/// `deps.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DepsImage {
    pub files: Vec<HostFile>,
}

/// What a host file was at the dump.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HostFile {
    /// Absolute path, as the sandbox sees it (the host's path: only the
    /// private tmpfs mounts differ, and their contents travel in the image).
    pub path: String,
    pub kind: HostFileKind,
    /// Size in bytes (regular files).
    pub size: u64,
    /// XXH3-64 of the contents, for files mapped into memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xxh3: Option<String>,
    /// Who depends on it, for messages ("process 2 maps it at 0x...", ...).
    pub uses: Vec<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HostFileKind {
    File,
    Dir,
}

impl HostFileKind {
    fn name(self) -> &'static str {
        match self {
            HostFileKind::File => "a regular file",
            HostFileKind::Dir => "a directory",
        }
    }
}

/// Kernel file systems: their files are not the image's to compare (a
/// path under /proc names another process after a restore).
const VIRTUAL: &[&str] = &["/proc", "/sys", "/dev"];

fn under(path: &str, mounts: &[&str]) -> bool {
    mounts.iter().any(|m| {
        path == *m
            || path
                .strip_prefix(m)
                .is_some_and(|rest| rest.starts_with('/'))
    })
}

/// Builds the dependency list from the dumped processes. `root` is where the
/// sandbox's root is seen from here (`/proc/INIT/root`); `private` the
/// private mountpoints whose contents the image holds.
pub fn collect(
    root: &Path,
    private: &[&str],
    procs: &[&ProcessImage],
    files: &FilesImage,
    cache: &mut DigestCache,
) -> Result<DepsImage> {
    // path -> (needs a digest, uses)
    let mut wanted: BTreeMap<String, (bool, Vec<String>)> = BTreeMap::new();
    let mut want = |path: &str, digest: bool, use_: String| {
        if !path.starts_with('/') || under(path, private) || under(path, VIRTUAL) {
            return;
        }
        let e = wanted.entry(path.to_string()).or_default();
        e.0 |= digest;
        if e.1.len() < 4 {
            e.1.push(use_);
        }
    };
    let by_id: BTreeMap<u32, &crate::image::FileDesc> =
        files.files.iter().map(|f| (f.id, f)).collect();
    for p in procs {
        if !p.mm.exe.is_empty() {
            want(
                &p.mm.exe,
                true,
                format!("the executable of process {}", p.pid),
            );
        }
        for v in &p.vmas {
            if let VmaKind::File {
                path,
                deleted: false,
                memfd: None,
                ghost: None,
                ..
            } = &v.kind
            {
                want(
                    path,
                    true,
                    format!("process {} maps it at {:#x}", p.pid, v.start),
                );
            }
        }
        for fd in &p.fds {
            let Some(desc) = by_id.get(&fd.file) else {
                continue;
            };
            if let FileKind::Path {
                path,
                mode,
                deleted: None,
                ghost: None,
                ..
            } = &desc.kind
            {
                let fmt = mode & libc::S_IFMT;
                if fmt == libc::S_IFREG || fmt == libc::S_IFDIR {
                    want(path, false, format!("process {} fd {}", p.pid, fd.fd));
                }
            }
        }
    }
    let mut out = DepsImage::default();
    for (path, (digest, uses)) in wanted {
        let at = root.join(path.trim_start_matches('/'));
        let md = match fs::metadata(&at) {
            Ok(m) => m,
            // Gone already (renamed or deleted under the sandbox's view
            // since it was opened): nothing to compare at restore; the
            // resource's own restore reports it.
            Err(_) => continue,
        };
        if on_kernel_fs(&at) {
            continue;
        }
        let ft = md.file_type();
        let kind = if ft.is_file() {
            HostFileKind::File
        } else if ft.is_dir() {
            HostFileKind::Dir
        } else {
            continue;
        };
        let xxh3 = if digest && kind == HostFileKind::File {
            Some(cache.digest(&at, &md)?)
        } else {
            None
        };
        out.files.push(HostFile {
            path,
            kind,
            size: if kind == HostFileKind::File {
                md.len()
            } else {
                0
            },
            xxh3,
            uses,
        });
    }
    Ok(out)
}

/// Whether `at` lies on a file system whose files are kernel state rather
/// than stored data (proc, sysfs, cgroup, devpts, debugfs, tracefs, bpf,
/// securityfs, configfs): nothing to compare at restore.
fn on_kernel_fs(at: &Path) -> bool {
    const KERNEL_FS: &[i64] = &[
        0x9fa0,      // proc
        0x6265_6572, // sysfs
        0x0027_e0eb, // cgroup
        0x6367_7270, // cgroup2
        0x1cd1,      // devpts
        0x6462_6720, // debugfs
        0x7472_6163, // tracefs
        0xcafe_4a11, // bpf
        0x7363_6673, // securityfs
        0x6265_6570, // configfs
    ];
    let Ok(c) = std::ffi::CString::new(at.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into `buf`, a zeroed struct of the right type;
    // `c` is a NUL-terminated path.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statfs(c.as_ptr(), &mut buf) } != 0 {
        return false;
    }
    KERNEL_FS.contains(&(buf.f_type as i64))
}

/// Bounds what a restore reads.
pub fn validate(d: &DepsImage) -> Result<()> {
    if d.files.len() > MAX_FILES {
        return Err(Error::Other(format!(
            "image: {FILE} names {} host files (at most {MAX_FILES})",
            d.files.len()
        )));
    }
    for f in &d.files {
        if !f.path.starts_with('/') || f.path.len() > 4096 || f.path.contains('\0') {
            return Err(Error::Other(format!(
                "image: {FILE}: bad path {:?}",
                f.path
            )));
        }
        if f.xxh3
            .as_ref()
            .is_some_and(|h| h.len() != 16 || !h.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(Error::Other(format!(
                "image: {FILE}: bad digest for {}",
                f.path
            )));
        }
    }
    Ok(())
}

/// One host file that is not what the image needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed {
    pub path: String,
    pub how: String,
    pub uses: Vec<String>,
}

impl std::fmt::Display for Changed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.how)?;
        if !self.uses.is_empty() {
            write!(f, " ({})", self.uses.join("; "))?;
        }
        Ok(())
    }
}

/// Compares every recorded file with the host's (seen from `root`).
pub fn check(root: &Path, d: &DepsImage, cache: &mut DigestCache) -> Result<Vec<Changed>> {
    let mut changed = Vec::new();
    for f in &d.files {
        let at = root.join(f.path.trim_start_matches('/'));
        let mut differs = |how: String| {
            changed.push(Changed {
                path: f.path.clone(),
                how,
                uses: f.uses.clone(),
            })
        };
        let md = match fs::metadata(&at) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                differs(format!(
                    "missing (No such file or directory; was {})",
                    f.kind.name()
                ));
                continue;
            }
            Err(e) => {
                differs(format!("cannot be read: {e}"));
                continue;
            }
        };
        let ft = md.file_type();
        let now = if ft.is_file() {
            Some(HostFileKind::File)
        } else if ft.is_dir() {
            Some(HostFileKind::Dir)
        } else {
            None
        };
        if now != Some(f.kind) {
            let what = if ft.is_symlink() {
                "a symbolic link"
            } else if ft.is_fifo() {
                "a FIFO"
            } else if ft.is_socket() {
                "a socket"
            } else if ft.is_char_device() || ft.is_block_device() {
                "a device node"
            } else if ft.is_dir() {
                "a directory"
            } else {
                "a regular file"
            };
            differs(format!("is now {what} (was {})", f.kind.name()));
            continue;
        }
        if f.kind != HostFileKind::File {
            continue;
        }
        if md.len() != f.size {
            differs(format!("size {} bytes, was {}", md.len(), f.size));
            continue;
        }
        if let Some(want) = &f.xxh3 {
            match cache.digest(&at, &md) {
                Ok(got) if &got == want => {}
                Ok(got) => differs(format!(
                    "contents differ (same size; digest {got}, was {want})"
                )),
                Err(e) => differs(format!("cannot be read: {e}")),
            }
        }
    }
    Ok(changed)
}

/// The refusal of a restore whose host files changed.
pub fn refusal(changed: &[Changed]) -> Error {
    let list: Vec<String> = changed.iter().map(|c| format!("  {c}")).collect();
    Error::Other(format!(
        "{} host file{} the image depends on {} missing or changed since the dump \
         (restore with --ignore-changed-files to go on anyway):\n{}",
        changed.len(),
        if changed.len() == 1 { "" } else { "s" },
        if changed.len() == 1 { "is" } else { "are" },
        list.join("\n")
    ))
}

/// Digests of host files, remembered by identity across dumps and restores.
#[derive(Debug, Default)]
pub struct DigestCache {
    path: Option<PathBuf>,
    entries: BTreeMap<String, CachedDigest>,
    dirty: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct CachedDigest {
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    xxh3: String,
}

/// Entries kept at most: the oldest are dropped first.
const CACHE_MAX: usize = 4096;

impl DigestCache {
    /// The cache of state directory `state_dir` (empty if absent or unreadable).
    pub fn open(state_dir: &Path) -> Self {
        let path = state_dir.join("file-digests.json");
        let entries = fs::read(&path)
            .ok()
            .filter(|b| b.len() < 16 << 20)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        DigestCache {
            path: Some(path),
            entries,
            dirty: false,
        }
    }

    /// The XXH3-64 of `at`, whose metadata is `md`.
    pub fn digest(&mut self, at: &Path, md: &fs::Metadata) -> Result<String> {
        let key = format!("{}:{}", md.dev(), md.ino());
        let want = (
            md.len(),
            (md.mtime(), md.mtime_nsec()),
            (md.ctime(), md.ctime_nsec()),
        );
        if let Some(c) = self.entries.get(&key) {
            if (c.size, c.mtime, c.ctime) == want {
                return Ok(c.xxh3.clone());
            }
        }
        let xxh3 = format!("{:016x}", digest_file(at)?);
        self.entries.insert(
            key,
            CachedDigest {
                size: want.0,
                mtime: want.1,
                ctime: want.2,
                xxh3: xxh3.clone(),
            },
        );
        self.dirty = true;
        Ok(xxh3)
    }

    /// Writes the cache back (best effort: a cache that cannot be written
    /// only costs a reread next time).
    pub fn save(&mut self) {
        let Some(path) = &self.path else { return };
        if !self.dirty {
            return;
        }
        while self.entries.len() > CACHE_MAX {
            let Some(k) = self.entries.keys().next().cloned() else {
                break;
            };
            self.entries.remove(&k);
        }
        let Ok(bytes) = serde_json::to_vec(&self.entries) else {
            return;
        };
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let written = {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            // Like every file of the state directory: the owner's alone.
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .and_then(|mut f| f.write_all(&bytes))
        };
        if written.is_err() || fs::rename(&tmp, path).is_err() {
            let _ = fs::remove_file(&tmp);
        }
        self.dirty = false;
    }
}

fn digest_file(at: &Path) -> Result<u64> {
    let mut f = File::open(at).map_err(crate::error::io(format!("reading {}", at.display())))?;
    let mut sum = crate::image::hash::Checksum::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(crate::error::io(format!("reading {}", at.display())))?;
        if n == 0 {
            break;
        }
        sum.update(&buf[..n]);
    }
    Ok(sum.digest())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(path: &str, size: u64, xxh3: Option<String>) -> DepsImage {
        DepsImage {
            files: vec![HostFile {
                path: path.into(),
                kind: HostFileKind::File,
                size,
                xxh3,
                uses: vec!["process 2 maps it at 0x400000".into()],
            }],
        }
    }

    #[test]
    fn unchanged_missing_resized_and_rewritten_files() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("lib.so");
        fs::write(&f, b"0123456789").unwrap();
        let mut cache = DigestCache::default();
        let md = fs::metadata(&f).unwrap();
        let d = cache.digest(&f, &md).unwrap();
        let path = f.to_str().unwrap();
        let img = rec(path, 10, Some(d.clone()));
        assert!(check(Path::new("/"), &img, &mut cache).unwrap().is_empty());

        fs::write(&f, b"0123456780").unwrap();
        let c = check(Path::new("/"), &img, &mut cache).unwrap();
        assert_eq!(c.len(), 1);
        assert!(c[0].how.starts_with("contents differ"), "{}", c[0]);
        assert!(c[0].to_string().contains("maps it at 0x400000"));

        fs::write(&f, b"012").unwrap();
        let c = check(Path::new("/"), &img, &mut cache).unwrap();
        assert_eq!(c[0].how, "size 3 bytes, was 10");

        fs::remove_file(&f).unwrap();
        fs::create_dir(&f).unwrap();
        let c = check(Path::new("/"), &img, &mut cache).unwrap();
        assert!(c[0].how.starts_with("is now a directory"), "{}", c[0]);

        fs::remove_dir(&f).unwrap();
        let c = check(Path::new("/"), &img, &mut cache).unwrap();
        assert!(c[0].how.starts_with("missing"), "{}", c[0]);
        let msg = refusal(&c).to_string();
        assert!(
            msg.contains(path) && msg.contains("--ignore-changed-files"),
            "{msg}"
        );
    }

    #[test]
    fn cache_survives_and_notices_changes() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("bin");
        fs::write(&f, vec![7u8; 3 << 20]).unwrap();
        let md = fs::metadata(&f).unwrap();
        let mut cache = DigestCache::open(dir.path());
        let d1 = cache.digest(&f, &md).unwrap();
        cache.save();
        let mut again = DigestCache::open(dir.path());
        assert_eq!(again.entries.len(), 1);
        assert_eq!(again.digest(&f, &md).unwrap(), d1);
        assert!(!again.dirty, "an unchanged file must come from the cache");
        fs::write(&f, vec![8u8; 3 << 20]).unwrap();
        let md2 = fs::metadata(&f).unwrap();
        assert_ne!(again.digest(&f, &md2).unwrap(), d1);
    }

    #[test]
    fn kernel_file_systems_are_not_dependencies() {
        assert!(on_kernel_fs(Path::new("/proc/self/stat")));
        assert!(on_kernel_fs(Path::new("/sys/kernel")));
        assert!(!on_kernel_fs(Path::new("/usr/bin")));
    }

    #[test]
    fn private_mounts_are_not_dependencies() {
        assert!(under("/tmp/x", &["/tmp"]));
        assert!(under("/tmp", &["/tmp"]));
        assert!(!under("/tmpfoo/x", &["/tmp"]));
        assert!(!under("/usr/lib/x", &["/tmp", "/dev/shm"]));
    }

    #[test]
    fn validation_bounds_paths_and_digests() {
        assert!(validate(&rec("relative", 1, None)).is_err());
        assert!(validate(&rec("/x", 1, Some("zz".into()))).is_err());
        assert!(validate(&rec("/x", 1, Some("0123456789abcdef".into()))).is_ok());
    }
}
