//! `stasis dump`, `restore`, `inspect` and `demo`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;

#[derive(Args, Debug)]
pub struct DumpArgs {
    /// The sandbox to dump.
    pub name: String,
    /// Image directory to write (created; must not hold an image already).
    #[arg(short = 'D', long = "images-dir")]
    pub dir: PathBuf,
    /// Let the workload run on after the dump instead of killing it.
    #[arg(long)]
    pub leave_running: bool,
    /// Dump established TCP connections (with TCP_REPAIR) instead of refusing them.
    #[arg(long)]
    pub tcp_established: bool,
    /// Print phase times and sizes as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// Image directory.
    pub dir: PathBuf,
    /// Name of the new sandbox (the dumped sandbox's name when absent).
    #[arg(long)]
    pub name: Option<String>,
    /// Detach: print the name and return.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Print phase times as JSON (with -d).
    #[arg(long)]
    pub json: bool,
    /// Restore even if executables, libraries or files the image depends
    /// on are missing or changed on this host (each is reported).
    #[arg(long)]
    pub ignore_changed_files: bool,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    pub dir: PathBuf,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct DemoArgs {}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

pub fn dump(state_dir: &Path, a: DumpArgs) -> Result<u8> {
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let opts = engine::DumpOptions {
        leave_running: a.leave_running,
        progress: (tty && !a.json).then_some(progress as fn(i32, u64, u64)),
        tcp_established: a.tcp_established,
    };
    let st = engine::dump(state_dir, &a.name, &a.dir, &opts)
        .with_context(|| format!("dump of sandbox {} failed", a.name))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&st)?);
    } else {
        println!(
            "dumped {} into {}: {} processes, {} pages ({:.1} MiB), image {:.1} MiB",
            a.name,
            a.dir.display(),
            st.processes,
            st.pages,
            mib(st.page_bytes),
            mib(st.image_bytes)
        );
        println!(
            "freeze {:.1} ms, collect {:.1} ms, memory {:.1} ms, write {:.1} ms; frozen {:.1} ms, total {:.1} ms",
            st.freeze_ms, st.collect_ms, st.memory_ms, st.write_ms, st.frozen_ms, st.total_ms
        );
        if st.live_pages > 0 {
            println!(
                "after the release: {} pages ({:.1} MiB) copied in {:.1} ms, {} write faults served",
                st.live_pages,
                mib(st.live_pages * 4096),
                st.live_ms,
                st.live_faults
            );
        }
    }
    Ok(0)
}

/// A progress line on the terminal while a large memory image is written.
fn progress(pid: i32, done: u64, total: u64) {
    const LARGE: u64 = 256 << 20;
    if total < LARGE {
        return;
    }
    let width = 30;
    let filled = (done * width / total.max(1)) as usize;
    eprint!(
        "\rprocess {pid}: memory [{}{}] {:.0}/{:.0} MiB",
        "#".repeat(filled),
        " ".repeat(width as usize - filled),
        mib(done),
        mib(total)
    );
    if done == total {
        eprintln!();
    }
}

pub fn restore(state_dir: &Path, a: RestoreArgs) -> Result<u8> {
    if !a.detach {
        // Held back until the workload runs, then passed on to it.
        sandbox::block_signals(sandbox::FORWARDED);
    }
    let opts = engine::RestoreOptions {
        name: a.name.clone(),
        ignore_changed_files: a.ignore_changed_files,
    };
    let r = engine::restore(state_dir, &a.dir, &opts).with_context(|| {
        format!(
            "restore of {} failed; nothing was left behind",
            a.dir.display()
        )
    })?;
    let name = r.sandbox.name().to_string();
    if a.detach {
        if a.json {
            let v = serde_json::json!({ "name": name, "stats": r.stats });
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            println!("{name}");
        }
        return Ok(0);
    }
    eprintln!(
        "restored {} as {name} in {:.1} ms ({} processes, {} pages)",
        a.dir.display(),
        r.stats.total_ms,
        r.stats.processes,
        r.stats.pages
    );
    let mut sb = r.sandbox;
    let mut out = std::io::stdout().lock();
    let code = sb
        .stream_log(&mut out, true, true)?
        .unwrap_or(sandbox::Status::Exited(None).exit_code().unwrap_or(255));
    Ok(code.clamp(0, 255) as u8)
}

pub fn inspect(a: InspectArgs) -> Result<u8> {
    let s =
        engine::inspect::inspect(&a.dir).with_context(|| format!("image {}", a.dir.display()))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print!("{}", engine::inspect::render(&s));
    }
    Ok(0)
}

pub fn demo(state_dir: &Path, _a: DemoArgs) -> Result<u8> {
    super::demo::run(state_dir)
}
