//! `stasis demo`: the whole cycle on a built-in workload, for a first look.
//! Checks the kernel, starts a shell that counts, dumps it mid-count, restores
//! it into a fresh sandbox and shows the count going on from where it stopped.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sandbox::{Launch, Profile, Sandbox};

const SCRIPT: &str = "i=0; while :; do i=$((i+1)); echo \"count $i\"; sleep 0.1; done";

/// The last `count N` line of a log, if any.
fn last_count(log: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .rev()
        .find_map(|l| l.strip_prefix("count ")?.trim().parse().ok())
}

/// Waits until the log shows a count of at least `n`.
fn wait_count(log: &Path, n: u64, timeout: Duration) -> Result<u64> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(c) = last_count(log) {
            if c >= n {
                return Ok(c);
            }
        }
        if Instant::now() > deadline {
            bail!(
                "the workload did not reach count {n} within {timeout:?} (log {})",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Cleanup<'a> {
    state_dir: &'a Path,
    names: Vec<String>,
    image: Option<std::path::PathBuf>,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for n in &self.names {
            if let Ok(mut sb) = Sandbox::open(self.state_dir, n) {
                let _ = sb.kill();
                let _ = sb.remove();
            }
        }
        if let Some(d) = &self.image {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

pub fn run(state_dir: &Path) -> Result<u8> {
    let mut out = std::io::stdout().lock();
    let tag = format!(
        "{}-{}",
        std::process::id(),
        Instant::now().elapsed().subsec_nanos() % 10000
    );
    let name = format!("demo-{tag}");
    let restored_name = format!("demo-{tag}-restored");
    let image = std::env::temp_dir().join(format!("stasis-demo-{tag}"));
    let mut cleanup = Cleanup {
        state_dir,
        names: vec![name.clone(), restored_name.clone()],
        image: Some(image.clone()),
    };

    kernel_check(&mut out)?;

    let sb = Sandbox::create(
        state_dir,
        Some(&name),
        &Profile::default(),
        Launch::Command(vec!["/bin/sh".into(), "-c".into(), SCRIPT.into()]),
    )
    .context("starting the demo workload")?;
    let log = sb.log_path();
    writeln!(
        out,
        "[2/4] started sandbox {name}: a shell counting every 100 ms"
    )?;
    let c = wait_count(&log, 10, Duration::from_secs(20))?;
    writeln!(out, "      ... count {c}")?;

    // The dump removes the sandbox and its log: keep the log open to read
    // where the count stood when the workload was frozen.
    let old_log = std::fs::File::open(&log).context("opening the workload's log")?;
    let st =
        engine::dump(state_dir, &name, &image, &engine::DumpOptions::default()).context("dump")?;
    let at_dump = {
        use std::io::Read;
        let mut text = String::new();
        (&old_log)
            .read_to_string(&mut text)
            .context("reading the workload's log")?;
        text.lines()
            .rev()
            .find_map(|l| l.strip_prefix("count ")?.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    writeln!(
        out,
        "[3/4] dumped at count {at_dump} in {:.1} ms (frozen {:.1} ms): {} processes, {:.1} MiB of pages into {}",
        st.total_ms,
        st.frozen_ms,
        st.processes,
        st.page_bytes as f64 / (1 << 20) as f64,
        image.display()
    )?;

    let r = engine::restore(
        state_dir,
        &image,
        &engine::RestoreOptions {
            name: Some(restored_name.clone()),
            ..Default::default()
        },
    )
    .context("restore")?;
    let rlog = r.sandbox.log_path();
    writeln!(
        out,
        "[4/4] restored as {restored_name} in {:.1} ms, in fresh namespaces with the same PIDs",
        r.stats.total_ms
    )?;
    // The restored sandbox's log starts with the dumped one's: the counts
    // before the dump, then the restored workload's own.
    let first = wait_count(&rlog, at_dump + 1, Duration::from_secs(10))?;
    let later = wait_count(&rlog, first + 4, Duration::from_secs(10))?;
    let text = std::fs::read_to_string(&rlog).unwrap_or_default();
    let counts: Vec<(u64, &str)> = text
        .lines()
        .filter_map(|l| Some((l.strip_prefix("count ")?.trim().parse().ok()?, l)))
        .collect();
    let at = counts.iter().position(|&(c, _)| c == at_dump);
    for &(c, l) in counts
        .iter()
        .skip(at.unwrap_or(0).saturating_sub(1))
        .take(6)
    {
        let when = if c <= at_dump {
            "  (before the dump)"
        } else {
            ""
        };
        writeln!(out, "      {l}{when}")?;
    }
    let next = at.and_then(|i| counts.get(i + 1)).map(|&(c, _)| c);
    if next != Some(at_dump + 1) {
        bail!(
            "the restored workload went on at count {}, expected {}",
            next.map_or("none".to_string(), |c| c.to_string()),
            at_dump + 1
        );
    }
    writeln!(
        out,
        "the count went on from {at_dump} to {later} across dump and restore."
    )?;
    drop(r);
    cleanup.names.retain(|_| true);
    drop(cleanup);
    Ok(0)
}

fn kernel_check(out: &mut impl Write) -> Result<()> {
    let report = probe::check(&[]).context("probing the kernel")?;
    let missing: Vec<String> = report
        .features
        .iter()
        .filter(|r| r.required && !r.outcome.is_ok())
        .map(|r| r.name.name().to_string())
        .collect();
    writeln!(
        out,
        "[1/4] kernel check: {} features probed in {:.0} ms, {}",
        report.features.len(),
        report.duration_ms,
        if missing.is_empty() {
            "every required one works".to_string()
        } else {
            format!("missing: {}", missing.join(", "))
        }
    )?;
    if !missing.is_empty() {
        bail!("this kernel lacks features stasis needs; `stasis check` tells what each gap disables and how to fix it");
    }
    Ok(())
}
