//! `stasis inspect`: what an image holds, for people and for tools.

use std::path::Path;

use serde::Serialize;

use crate::error::Result;
use crate::image::{DumpStats, FileKind, Manifest, PAGE_SIZE};
use crate::restore::load;

#[derive(Debug, Serialize)]
pub struct ImageSummary {
    pub manifest: Manifest,
    pub sandbox: String,
    pub workload_pid: i32,
    pub stats: DumpStats,
    pub processes: Vec<ProcessSummary>,
    /// Host files the image depends on, as they were at the dump.
    pub host_files: Vec<crate::deps::HostFile>,
}

#[derive(Debug, Serialize)]
pub struct ProcessSummary {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    pub zombie: Option<i32>,
    pub comm: String,
    pub exe: String,
    pub threads: Vec<i32>,
    pub areas: Vec<AreaSummary>,
    pub fds: Vec<FdSummary>,
    pub sigmask: u64,
    pub pending_signals: Vec<i32>,
    pub handled_signals: Vec<i32>,
}

#[derive(Debug, Serialize)]
pub struct AreaSummary {
    pub start: u64,
    pub end: u64,
    pub prot: String,
    pub shared: bool,
    pub what: String,
    pub pages_saved: u64,
}

#[derive(Debug, Serialize)]
pub struct FdSummary {
    pub fd: i32,
    pub what: String,
    pub cloexec: bool,
}

fn prot(p: u32) -> String {
    let mut s = String::new();
    s.push(if p & libc::PROT_READ as u32 != 0 {
        'r'
    } else {
        '-'
    });
    s.push(if p & libc::PROT_WRITE as u32 != 0 {
        'w'
    } else {
        '-'
    });
    s.push(if p & libc::PROT_EXEC as u32 != 0 {
        'x'
    } else {
        '-'
    });
    s
}

/// Reads and verifies the image at `dir`.
pub fn inspect(dir: &Path) -> Result<ImageSummary> {
    let img = load(dir)?;
    // Every page file too, as restore would before the workload runs again.
    img.verify_streamed()?;
    let mut processes = Vec::new();
    for e in &img.inventory.processes {
        let Some(p) = img.procs.get(&e.pid) else {
            processes.push(ProcessSummary {
                pid: e.pid,
                ppid: e.ppid,
                pgid: e.pgid,
                sid: e.sid,
                zombie: e.zombie,
                comm: String::new(),
                exe: String::new(),
                threads: Vec::new(),
                areas: Vec::new(),
                fds: Vec::new(),
                sigmask: 0,
                pending_signals: Vec::new(),
                handled_signals: Vec::new(),
            });
            continue;
        };
        let areas = p
            .vmas
            .iter()
            .map(|v| AreaSummary {
                start: v.start,
                end: v.end,
                prot: prot(v.prot),
                shared: v.shared,
                what: match &v.kind {
                    crate::image::VmaKind::Anon if v.label.is_empty() => "anonymous".into(),
                    crate::image::VmaKind::Anon => v.label.clone(),
                    crate::image::VmaKind::File { path, .. } => path.clone(),
                    crate::image::VmaKind::Special { name } => name.clone(),
                    crate::image::VmaKind::Aio { .. } => "[aio] ring".into(),
                },
                pages_saved: v.pages.iter().map(|r| r.npages).sum(),
            })
            .collect();
        let fds = p
            .fds
            .iter()
            .map(|f| {
                let what = match img.files.files.get(f.file as usize).map(|d| &d.kind) {
                    Some(FileKind::Path {
                        path,
                        pos,
                        deleted,
                        ghost,
                        ..
                    }) => {
                        format!(
                            "{path} at {pos}{}",
                            if deleted.is_some() || ghost.is_some() {
                                " (deleted, saved)"
                            } else {
                                ""
                            }
                        )
                    }
                    Some(FileKind::SandboxLog) => "sandbox log".into(),
                    Some(FileKind::Pipe { pipe, fifo }) => match fifo {
                        Some(p) => format!("FIFO {p}"),
                        None => {
                            let bytes = img
                                .files
                                .pipes
                                .get(*pipe as usize)
                                .map(|p| p.data.len)
                                .unwrap_or(0);
                            format!("pipe {pipe} ({bytes} bytes queued)")
                        }
                    },
                    Some(FileKind::Socket { socket }) => {
                        crate::net::describe(img.files.sockets.get(*socket as usize))
                    }
                    Some(other) => crate::files::describe(&img.files, other),
                    None => "?".into(),
                };
                FdSummary {
                    fd: f.fd,
                    what,
                    cloexec: f.cloexec,
                }
            })
            .collect();
        let t = &p.threads[0];
        processes.push(ProcessSummary {
            pid: e.pid,
            ppid: e.ppid,
            pgid: e.pgid,
            sid: e.sid,
            zombie: None,
            comm: p.core.comm.clone(),
            exe: p.mm.exe.clone(),
            threads: p.threads.iter().map(|t| t.tid).collect(),
            areas,
            fds,
            sigmask: t.sigmask,
            pending_signals: t
                .pending
                .iter()
                .chain(&p.shared_pending)
                .map(|s| s.signo)
                .collect(),
            handled_signals: p
                .sigactions
                .iter()
                .filter(|a| a.handler > 1)
                .map(|a| a.signo)
                .collect(),
        });
    }
    Ok(ImageSummary {
        manifest: img.reader.manifest().clone(),
        sandbox: img.inventory.sandbox.clone(),
        workload_pid: img.inventory.workload_pid,
        stats: img.inventory.stats.clone(),
        processes,
        host_files: img.deps.files.clone(),
    })
}

/// The summary as a readable text.
pub fn render(s: &ImageSummary) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "image of sandbox {} (format {}.{}, stasis {}, kernel {}, xstate {:#x}/{} bytes)",
        s.sandbox,
        s.manifest.format_version,
        s.manifest.format_minor,
        s.manifest.stasis_version,
        s.manifest.kernel_release,
        s.manifest.cpu.xcr0,
        s.manifest.cpu.xstate_size
    );
    if !s.manifest.cpu.flags.is_empty() {
        let _ = writeln!(
            o,
            "CPU features it needs: {}",
            s.manifest.cpu.flags.join(" ")
        );
    }
    let st = &s.stats;
    let _ = writeln!(
        o,
        "dump: {} processes, {} threads, {} areas, {} pages ({:.1} MiB); freeze {:.1} ms, collect {:.1} ms, memory {:.1} ms",
        st.processes,
        st.threads,
        st.vmas,
        st.pages,
        (st.pages * PAGE_SIZE) as f64 / (1 << 20) as f64,
        st.freeze_ms,
        st.collect_ms,
        st.memory_ms
    );
    if !s.host_files.is_empty() {
        let _ = writeln!(
            o,
            "host files it depends on (checked at restore): {}",
            s.host_files.len()
        );
        for f in &s.host_files {
            let _ = writeln!(
                o,
                "  {} ({} bytes{})",
                f.path,
                f.size,
                f.xxh3
                    .as_ref()
                    .map(|h| format!(", xxh3 {h}"))
                    .unwrap_or_default()
            );
        }
    }
    for p in &s.processes {
        let _ = writeln!(o);
        if let Some(z) = p.zombie {
            let _ = writeln!(
                o,
                "process {} (parent {}): zombie, wait status {z:#x}",
                p.pid, p.ppid
            );
            continue;
        }
        let _ = writeln!(
            o,
            "process {} {:?} (parent {}, group {}, session {}) {}",
            p.pid, p.comm, p.ppid, p.pgid, p.sid, p.exe
        );
        let _ = writeln!(
            o,
            "  threads {:?}; blocked {:#x}; pending {:?}; handled {:?}",
            p.threads, p.sigmask, p.pending_signals, p.handled_signals
        );
        for a in &p.areas {
            let _ = writeln!(
                o,
                "  {:012x}-{:012x} {}{} {:>8} pages saved  {}",
                a.start,
                a.end,
                a.prot,
                if a.shared { 's' } else { 'p' },
                a.pages_saved,
                a.what
            );
        }
        for f in &p.fds {
            let _ = writeln!(
                o,
                "  fd {:>3}{} {}",
                f.fd,
                if f.cloexec { " (cloexec)" } else { "" },
                f.what
            );
        }
    }
    o
}
