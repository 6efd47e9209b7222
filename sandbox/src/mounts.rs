//! The sandbox's mount namespace, set up by init before the workload starts.

use std::fs;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{Mode, SFlag};

use crate::profile::Mounts;

/// Where a path of the sandbox lies before pivot_root.
fn inside(base: &Path, target: &Path) -> PathBuf {
    base.join(target.strip_prefix("/").unwrap_or(target))
}

fn err(what: String) -> impl FnOnce(nix::Error) -> String {
    move |e| format!("{what}: {e}")
}

fn ensure_dir(p: &Path, create: bool) -> Result<(), String> {
    if p.is_dir() {
        return Ok(());
    }
    if !create {
        return Err(format!("mount point {} does not exist", p.display()));
    }
    fs::create_dir_all(p).map_err(|e| format!("create mount point {}: {e}", p.display()))
}

/// The devices every sandbox's /dev holds (when the host has them).
/// userfaultfd is there for stasis's own use: a dump that leaves the
/// workload running makes a userfaultfd inside the workload through it.
pub const DEVICES: &[&str] = &[
    "null",
    "zero",
    "full",
    "random",
    "urandom",
    "tty",
    "userfaultfd",
];
/// Of `DEVICES`, those a host may lack.
const OPTIONAL_DEVICES: &[&str] = &["userfaultfd"];

/// Mounts the sandbox's own /dev at `base`/dev, in place of the host's
/// (detached first, with everything mounted under it): a tmpfs holding
/// nodes of the host's `DEVICES` and `m.devices` (same numbers, modes and
/// owners), a devpts instance of its own on /dev/pts with /dev/ptmx
/// pointing into it (the host's terminals are not reachable, and a terminal
/// made inside is the sandbox's), an empty /dev/shm, and the /proc/self/fd
/// links. It is made read-only once filled: no node can be made there
/// later, and what a workload would write there would not travel in an
/// image.
fn setup_dev(base: &Path, m: &Mounts, create: bool) -> Result<(), String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let dev = inside(base, Path::new("/dev"));
    ensure_dir(&dev, create)?;
    // The host's nodes, looked at before its /dev goes.
    let mut nodes = Vec::new();
    let wanted = DEVICES
        .iter()
        .map(|d| (d.to_string(), OPTIONAL_DEVICES.contains(d)))
        .chain(m.devices.iter().map(|d| (d.clone(), false)));
    for (name, optional) in wanted {
        let host = Path::new("/dev").join(&name);
        match fs::symlink_metadata(&host) {
            Ok(md) => {
                let kind = md.file_type();
                let fmt = if kind.is_char_device() {
                    SFlag::S_IFCHR
                } else if kind.is_block_device() {
                    SFlag::S_IFBLK
                } else {
                    return Err(format!(
                        "mounts.devices: {} on the host is not a device node",
                        host.display()
                    ));
                };
                nodes.push((name, fmt, md.mode() & 0o7777, md.rdev(), md.uid(), md.gid()));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && optional => {}
            Err(e) => return Err(format!("mounts.devices: {}: {e}", host.display())),
        }
    }
    match umount2(&dev, MntFlags::MNT_DETACH) {
        // EINVAL: nothing is mounted there.
        Ok(()) | Err(nix::Error::EINVAL) => {}
        Err(e) => {
            return Err(format!(
                "mounts.dev: detach the host's {}: {e}",
                dev.display()
            ))
        }
    }
    mount(
        Some("stasis-dev"),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=755,size=64k"),
    )
    .map_err(err(format!("mounts.dev: mount tmpfs on {}", dev.display())))?;
    for (name, fmt, mode, rdev, uid, gid) in &nodes {
        let target = dev.join(name);
        if let Some(parent) = target.parent() {
            ensure_dir(parent, true)?;
        }
        nix::sys::stat::mknod(&target, *fmt, Mode::from_bits_truncate(*mode), *rdev)
            .map_err(err(format!("mounts.dev: mknod {}", target.display())))?;
        // mknod applies the umask: the host's mode as it is.
        fs::set_permissions(&target, std::os::unix::fs::PermissionsExt::from_mode(*mode))
            .and_then(|_| std::os::unix::fs::chown(&target, Some(*uid), Some(*gid)))
            .map_err(|e| format!("mounts.dev: mode and owner of {}: {e}", target.display()))?;
    }
    let pts = dev.join("pts");
    ensure_dir(&pts, true)?;
    mount(
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )
    .map_err(err(format!(
        "mounts.dev: mount devpts on {}",
        pts.display()
    )))?;
    let links = [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ];
    for (name, to) in links {
        std::os::unix::fs::symlink(to, dev.join(name)).map_err(|e| {
            format!(
                "mounts.dev: symlink {} -> {to}: {e}",
                dev.join(name).display()
            )
        })?;
    }
    let shm = dev.join("shm");
    ensure_dir(&shm, true)?;
    fs::set_permissions(&shm, std::os::unix::fs::PermissionsExt::from_mode(0o1777))
        .map_err(|e| format!("mounts.dev: chmod {}: {e}", shm.display()))?;
    mount(
        None::<&str>,
        &dev,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=755,size=64k"),
    )
    .map_err(err(format!("mounts.dev: make {} read-only", dev.display())))?;
    Ok(())
}

/// Sets up the mount namespace of the calling process (init): private
/// propagation, /dev, binds, /proc, /tmp, /dev/shm and the optional pivot_root.
pub fn setup(m: &Mounts) -> Result<(), String> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(err("make / private (mounts)".into()))?;

    let base = match &m.root {
        Some(root) => {
            // pivot_root needs the new root to be a mount point.
            mount(
                Some(root.as_path()),
                root.as_path(),
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(err(format!("mounts.root: bind {}", root.display())))?;
            root.clone()
        }
        None => PathBuf::from("/"),
    };
    let create = m.root.is_some();
    if m.dev {
        setup_dev(&base, m, create)?;
    }

    for b in &m.bind {
        let target = inside(&base, &b.target);
        if b.source.is_dir() {
            ensure_dir(&target, create)?;
        } else if !target.exists() {
            if !create {
                return Err(format!(
                    "mounts.bind: target {} does not exist",
                    target.display()
                ));
            }
            if let Some(parent) = target.parent() {
                ensure_dir(parent, true)?;
            }
            fs::File::create(&target)
                .map_err(|e| format!("mounts.bind: create {}: {e}", target.display()))?;
        }
        mount(
            Some(b.source.as_path()),
            &target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(err(format!(
            "mounts.bind: bind {} on {}",
            b.source.display(),
            target.display()
        )))?;
        if b.readonly {
            mount(
                None::<&str>,
                &target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            )
            .map_err(err(format!(
                "mounts.bind: make {} read-only",
                target.display()
            )))?;
        }
    }

    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if m.proc {
        let t = inside(&base, Path::new("/proc"));
        ensure_dir(&t, create)?;
        mount(
            Some("proc"),
            &t,
            Some("proc"),
            nosuid_nodev | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .map_err(err(format!("mounts.proc: mount proc on {}", t.display())))?;
    }
    if m.tmp {
        let t = inside(&base, Path::new("/tmp"));
        ensure_dir(&t, create)?;
        mount(
            Some("tmpfs"),
            &t,
            Some("tmpfs"),
            nosuid_nodev,
            Some("mode=1777"),
        )
        .map_err(err(format!("mounts.tmp: mount tmpfs on {}", t.display())))?;
    }
    if m.dev_shm {
        let t = inside(&base, Path::new("/dev/shm"));
        ensure_dir(&t, create)?;
        mount(
            Some("shm"),
            &t,
            Some("tmpfs"),
            nosuid_nodev,
            Some("mode=1777"),
        )
        .map_err(err(format!(
            "mounts.dev_shm: mount tmpfs on {}",
            t.display()
        )))?;
    }

    if let Some(root) = &m.root {
        // pivot_root(".", "."): the old root ends up stacked under the new one
        // and is detached right away; no directory for it is needed.
        std::env::set_current_dir(root)
            .map_err(|e| format!("mounts.root: chdir {}: {e}", root.display()))?;
        nix::unistd::pivot_root(".", ".").map_err(err(format!(
            "mounts.root: pivot_root into {}",
            root.display()
        )))?;
        umount2(".", MntFlags::MNT_DETACH)
            .map_err(err("mounts.root: detach the old root".into()))?;
        std::env::set_current_dir("/").map_err(|e| format!("mounts.root: chdir /: {e}"))?;
    }
    Ok(())
}
