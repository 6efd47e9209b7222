//! The sandbox's own filesystems: the private tmpfs mounts (/tmp, /dev/shm)
//! exist only inside the sandbox, so their whole contents go into the image
//! (directories, files, symlinks, FIFOs and hard links, with modes, owners
//! and times) and come back in the new sandbox before any fd is reopened.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::image::{Blob, PageSink};

/// `mounts.json`: one record per private tmpfs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MountsImage {
    pub tmpfs: Vec<TmpfsImage>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TmpfsImage {
    /// Where it is mounted inside the sandbox.
    pub mountpoint: String,
    /// Parents before children; "" is the mount's root.
    pub entries: Vec<Entry>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EntryKind {
    Dir,
    File {
        data: Blob,
    },
    Symlink {
        target: String,
    },
    Fifo,
    /// Another name of a file recorded earlier.
    HardLink {
        to: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    /// Path relative to the mountpoint.
    pub path: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_sec: i64,
    pub mtime_nsec: i64,
    #[serde(flatten)]
    pub kind: EntryKind,
}

/// The private tmpfs mountpoints of a profile.
pub fn private_tmpfs(profile: &sandbox::Profile) -> Vec<&'static str> {
    let mut v = Vec::new();
    if profile.namespaces.mount && profile.mounts.tmp {
        v.push("/tmp");
    }
    if profile.namespaces.mount && profile.mounts.dev_shm {
        v.push("/dev/shm");
    }
    v
}

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |cause| Error::Io { what, cause }
}

/// Saves the contents of each private tmpfs, seen through init's root.
pub fn collect(init_pid: i32, mountpoints: &[&str], blobs: &mut PageSink) -> Result<MountsImage> {
    let mut out = MountsImage::default();
    for mp in mountpoints {
        let root = PathBuf::from(format!("/proc/{init_pid}/root{mp}"));
        let mut entries = Vec::new();
        let mut seen: HashMap<u64, String> = HashMap::new();
        walk(&root, "", &mut entries, &mut seen, blobs)?;
        out.tmpfs.push(TmpfsImage {
            mountpoint: mp.to_string(),
            entries,
        });
    }
    Ok(out)
}

fn walk(
    root: &Path,
    rel: &str,
    out: &mut Vec<Entry>,
    seen: &mut HashMap<u64, String>,
    blobs: &mut PageSink,
) -> Result<()> {
    let path = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    let meta =
        std::fs::symlink_metadata(&path).map_err(io_err(format!("reading {}", path.display())))?;
    let ft = meta.file_type();
    use std::os::unix::fs::FileTypeExt;
    let kind = if ft.is_dir() {
        EntryKind::Dir
    } else if ft.is_symlink() {
        let t = std::fs::read_link(&path)
            .map_err(io_err(format!("reading link {}", path.display())))?;
        EntryKind::Symlink {
            target: t.to_string_lossy().to_string(),
        }
    } else if ft.is_fifo() {
        EntryKind::Fifo
    } else if ft.is_file() {
        if meta.nlink() > 1 {
            if let Some(first) = seen.get(&meta.ino()) {
                out.push(entry(rel, &meta, EntryKind::HardLink { to: first.clone() }));
                return Ok(());
            }
            seen.insert(meta.ino(), rel.to_string());
        }
        let f = File::open(&path).map_err(io_err(format!("opening {}", path.display())))?;
        let offset = blobs.position();
        let mut buf = vec![0u8; (meta.len() as usize).clamp(1, 1 << 20)];
        let mut done = 0u64;
        loop {
            let n = f
                .read_at(&mut buf, done)
                .map_err(io_err(format!("reading {}", path.display())))?;
            if n == 0 {
                break;
            }
            blobs.write_all(&buf[..n])?;
            done += n as u64;
        }
        EntryKind::File {
            data: Blob { offset, len: done },
        }
    } else {
        // Sockets and device nodes have no contents to carry; sockets are
        // bound anew by their programs.
        return Ok(());
    };
    let is_dir = kind == EntryKind::Dir;
    out.push(entry(rel, &meta, kind));
    if is_dir {
        let mut names: Vec<_> = std::fs::read_dir(&path)
            .map_err(io_err(format!("listing {}", path.display())))?
            .flatten()
            .map(|e| e.file_name())
            .collect();
        names.sort();
        for n in names {
            let child = if rel.is_empty() {
                n.to_string_lossy().to_string()
            } else {
                format!("{rel}/{}", n.to_string_lossy())
            };
            walk(root, &child, out, seen, blobs)?;
        }
    }
    Ok(())
}

fn entry(rel: &str, meta: &std::fs::Metadata, kind: EntryKind) -> Entry {
    Entry {
        path: rel.to_string(),
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime_sec: meta.mtime(),
        mtime_nsec: meta.mtime_nsec(),
        kind,
    }
}

fn cstr(p: &Path) -> std::result::Result<CString, String> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| format!("path with a NUL byte: {}", p.display()))
}

fn check(rc: libc::c_int, what: &str, p: &Path) -> std::result::Result<(), String> {
    if rc < 0 {
        Err(format!(
            "{what} {}: {}",
            p.display(),
            std::io::Error::last_os_error()
        ))
    } else {
        Ok(())
    }
}

/// Checks the records before anything is created.
pub fn validate(m: &MountsImage) -> Result<()> {
    for t in &m.tmpfs {
        for e in &t.entries {
            let bad = e.path.starts_with('/')
                || e.path.split('/').any(|c| c == ".." || c == ".")
                || e.path.contains('\0')
                || (e.path.is_empty() && e.kind != EntryKind::Dir);
            if bad {
                return Err(Error::Other(format!(
                    "image: bad tmpfs path {:?} in {}",
                    e.path, t.mountpoint
                )));
            }
        }
    }
    Ok(())
}

/// Recreates the contents (run inside the new sandbox's mount namespace,
/// where the mountpoints are fresh, empty tmpfs).
pub fn restore(m: &MountsImage, blobs: &File) -> std::result::Result<(), String> {
    for t in &m.tmpfs {
        let root = Path::new(&t.mountpoint);
        for e in &t.entries {
            let p = if e.path.is_empty() {
                root.to_path_buf()
            } else {
                root.join(&e.path)
            };
            let c = cstr(&p)?;
            match &e.kind {
                EntryKind::Dir if !e.path.is_empty() => {
                    // SAFETY: mkdir of a path we built.
                    let rc = unsafe { libc::mkdir(c.as_ptr(), 0o700) };
                    check(rc, "mkdir", &p)?
                }
                EntryKind::Dir => {}
                EntryKind::File { data } => {
                    // SAFETY: creating a new file; the fd is owned below.
                    let fd = unsafe {
                        libc::open(
                            c.as_ptr(),
                            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
                            0o600,
                        )
                    };
                    check(fd, "create", &p)?;
                    // SAFETY: `fd` is new and ours.
                    let f = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
                    let mut buf = vec![0u8; (data.len as usize).clamp(1, 1 << 20)];
                    let mut done = 0u64;
                    while done < data.len {
                        let n = ((data.len - done) as usize).min(buf.len());
                        blobs
                            .read_exact_at(&mut buf[..n], data.offset + done)
                            .and_then(|_| f.write_all_at(&buf[..n], done))
                            .map_err(|e| format!("restoring {}: {e}", p.display()))?;
                        done += n as u64;
                    }
                }
                EntryKind::Symlink { target } => {
                    let tc = CString::new(target.as_bytes())
                        .map_err(|_| format!("bad link target for {}", p.display()))?;
                    // SAFETY: symlink between two C strings.
                    let rc = unsafe { libc::symlink(tc.as_ptr(), c.as_ptr()) };
                    check(rc, "symlink", &p)?;
                }
                // SAFETY: mkfifo of a path we built.
                EntryKind::Fifo => check(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, "mkfifo", &p)?,
                EntryKind::HardLink { to } => {
                    let tc = cstr(&root.join(to))?;
                    // SAFETY: link between two paths we built.
                    check(unsafe { libc::link(tc.as_ptr(), c.as_ptr()) }, "link", &p)?;
                    continue;
                }
            }
            // SAFETY: lchown and chmod on the path just created.
            unsafe {
                check(libc::lchown(c.as_ptr(), e.uid, e.gid), "chown", &p)?;
                if !matches!(e.kind, EntryKind::Symlink { .. }) {
                    check(libc::chmod(c.as_ptr(), e.mode), "chmod", &p)?;
                }
            }
        }
        // Times last, children before parents, so creating entries does not
        // move a directory's mtime again.
        for e in t.entries.iter().rev() {
            if matches!(e.kind, EntryKind::HardLink { .. }) {
                continue;
            }
            let p = if e.path.is_empty() {
                root.to_path_buf()
            } else {
                root.join(&e.path)
            };
            let c = cstr(&p)?;
            let ts = [
                libc::timespec {
                    tv_sec: 0,
                    tv_nsec: libc::UTIME_OMIT,
                },
                libc::timespec {
                    tv_sec: e.mtime_sec,
                    tv_nsec: e.mtime_nsec,
                },
            ];
            // SAFETY: utimensat on a path we built, with two timespecs.
            let rc = unsafe {
                libc::utimensat(
                    libc::AT_FDCWD,
                    c.as_ptr(),
                    ts.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            };
            check(rc, "utimensat", &p)?;
        }
    }
    let _ = blobs.as_raw_fd();
    Ok(())
}
