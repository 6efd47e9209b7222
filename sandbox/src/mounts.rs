//! The sandbox's mount namespace, set up by init before the workload starts.

use std::fs;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

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

/// Sets up the mount namespace of the calling process (init): private
/// propagation, binds, /proc, /tmp, /dev/shm and the optional pivot_root.
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
