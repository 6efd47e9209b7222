//! `stasis run`, `ps`, `logs`, `kill`, `rm` and `exec`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::Args;
use sandbox::{Launch, Profile, Sandbox, Status};

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Sandbox name (unique; generated when absent).
    #[arg(long)]
    pub name: Option<String>,
    /// Sandbox profile (TOML); configs/default.toml's settings when absent.
    #[arg(long)]
    pub profile: Option<PathBuf>,
    /// Detach: print the name and return.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Remove the sandbox's state when it ends (foreground only).
    #[arg(long, conflicts_with = "detach")]
    pub rm: bool,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct PsArgs {
    /// Print a JSON array (one object per sandbox) instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// Follow the log as it grows, until the sandbox exits.
    #[arg(short = 'f', long)]
    pub follow: bool,
    pub name: String,
}

#[derive(Args, Debug)]
pub struct KillArgs {
    pub name: String,
    /// Signal name or number.
    #[arg(short = 's', long, default_value = "TERM")]
    pub signal: String,
}

#[derive(Args, Debug)]
pub struct RmArgs {
    pub name: String,
    /// Kill a running sandbox first.
    #[arg(short = 'f', long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct NameArgs {
    pub name: String,
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    pub name: String,
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

fn exit_u8(code: i32) -> u8 {
    code.clamp(0, 255) as u8
}

pub fn run(state_dir: &Path, args: RunArgs) -> Result<u8> {
    let profile = match &args.profile {
        Some(p) => Profile::load(p)?,
        None => Profile::default(),
    };
    // Held back until the workload runs, then passed on to it.
    sandbox::block_signals(sandbox::FORWARDED);
    let mut sb = match Sandbox::create(
        state_dir,
        args.name.as_deref(),
        &profile,
        Launch::Command(args.command.clone()),
    ) {
        Ok(sb) => sb,
        Err(e) => {
            if let Some(code) = e.exec_exit_code() {
                eprintln!("stasis: error: {e}");
                return Ok(exit_u8(code));
            }
            return Err(e).context("cannot start the sandbox");
        }
    };
    if args.detach {
        println!("{}", sb.name());
        return Ok(0);
    }
    let mut out = std::io::stdout().lock();
    let code = sb
        .stream_log(&mut out, true, true)?
        .unwrap_or(sandbox::Status::Exited(None).exit_code().unwrap_or(255));
    if args.rm {
        sb.remove()?;
    }
    Ok(exit_u8(code))
}

fn format_duration(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn format_bytes(b: Option<u64>) -> String {
    match b {
        None => "-".into(),
        Some(b) if b < 10 << 10 => format!("{b}B"),
        Some(b) if b < 10 << 20 => format!("{}K", b >> 10),
        Some(b) if b < 10 << 30 => format!("{}M", b >> 20),
        Some(b) => format!("{}G", b >> 30),
    }
}

pub fn ps(state_dir: &Path, args: PsArgs) -> Result<u8> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut rows = Vec::new();
    for name in Sandbox::list(state_dir)? {
        let sb = match Sandbox::open(state_dir, &name) {
            Ok(sb) => sb,
            Err(e) => {
                tracing::warn!("skipping sandbox {name}: {e}");
                continue;
            }
        };
        let status = sb.status()?;
        let running = !matches!(status, Status::Exited(_));
        if !running {
            // A sandbox whose init is gone: drop its cgroup and veth.
            if let Err(e) = sb.cleanup() {
                tracing::warn!("cleaning up sandbox {name}: {e}");
            }
        }
        let (state, exit_code, signal) = match status {
            Status::Running => ("running".to_string(), None, None),
            Status::Frozen => ("frozen".to_string(), None, None),
            Status::Exited(Some(r)) => (
                match (r.code, r.signal) {
                    (Some(c), _) => format!("exited ({c})"),
                    (None, Some(s)) => format!("exited (signal {s})"),
                    _ => "exited".to_string(),
                },
                Some(r.shell_code()),
                r.signal,
            ),
            Status::Exited(None) => ("exited (killed)".to_string(), Some(137), Some(9)),
        };
        let memory = if running {
            sb.cgroup().memory_bytes()
        } else {
            None
        };
        let pids = if running {
            sb.cgroup().procs().ok().map(|p| p.len())
        } else {
            None
        };
        rows.push(serde_json::json!({
            "name": sb.name(),
            "state": if running { state.clone() } else { "exited".to_string() },
            "state_text": state,
            "exit_code": exit_code,
            "signal": signal,
            "init_pid": sb.init_pid(),
            "workload_pid": sb.workload_pid(),
            "workload_ns_pid": sb.workload_ns_pid(),
            "main_adopted": sb.main_adopted(),
            "created": sb.created(),
            "uptime_secs": now.saturating_sub(sb.created()),
            "memory_bytes": memory,
            "processes": pids,
            "command": sb.command(),
            "cgroups": sb.cgroup().dirs(),
            "freezer": sb.cgroup().freezer,
            "veth_host": sb.veth_host(),
        }));
    }
    // State directories without state: a creation under way, or one whose
    // creator died (`stasis rm --force NAME` removes what it left).
    for name in Sandbox::list_incomplete(state_dir) {
        rows.push(serde_json::json!({
            "name": name,
            "state": "incomplete",
            "state_text": "incomplete",
            "init_pid": null,
            "command": [],
        }));
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
        return Ok(0);
    }
    writeln!(
        out,
        "{:<20} {:<18} {:>8} {:>14} {:>7} {:>7}  COMMAND",
        "NAME", "STATE", "INIT", "PID (NS)", "UPTIME", "MEMORY"
    )?;
    for r in rows {
        let pid = match (r["workload_pid"].as_i64(), r["workload_ns_pid"].as_i64()) {
            (Some(h), Some(n)) => format!("{h} ({n})"),
            (None, Some(n)) => format!("- ({n})"),
            _ => "-".into(),
        };
        let cmd: Vec<String> = r["command"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        writeln!(
            out,
            "{:<20} {:<18} {:>8} {:>14} {:>7} {:>7}  {}",
            r["name"].as_str().unwrap_or(""),
            r["state_text"].as_str().unwrap_or(""),
            r["init_pid"],
            pid,
            format_duration(r["uptime_secs"].as_u64().unwrap_or(0)),
            format_bytes(r["memory_bytes"].as_u64()),
            cmd.join(" ")
        )?;
    }
    Ok(0)
}

pub fn logs(state_dir: &Path, args: LogsArgs) -> Result<u8> {
    let mut sb = Sandbox::open(state_dir, &args.name)?;
    let mut out = std::io::stdout().lock();
    sb.stream_log(&mut out, args.follow, false)?;
    Ok(0)
}

/// Parses `TERM`, `SIGTERM`, `term` or `15`.
fn parse_signal(s: &str) -> Result<i32> {
    if let Ok(n) = s.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
        anyhow::bail!("signal number {n} is out of range (1..=64)");
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    nix::sys::signal::Signal::from_str(&name)
        .map(|s| s as i32)
        .map_err(|_| anyhow::anyhow!("unknown signal `{s}`"))
}

pub fn kill(state_dir: &Path, args: KillArgs) -> Result<u8> {
    let sig = parse_signal(&args.signal)?;
    let sb = Sandbox::open(state_dir, &args.name)?;
    sb.signal(sig)
        .with_context(|| format!("cannot signal sandbox `{}`", args.name))?;
    Ok(0)
}

pub fn freeze(state_dir: &Path, args: NameArgs, freeze: bool) -> Result<u8> {
    let sb = Sandbox::open(state_dir, &args.name)?;
    if !sb.is_running() {
        anyhow::bail!("sandbox `{}` is not running", args.name);
    }
    if freeze {
        sb.cgroup().freeze()
    } else {
        sb.cgroup().thaw()
    }
    .with_context(|| {
        format!(
            "cannot {} sandbox `{}`",
            if freeze { "freeze" } else { "thaw" },
            args.name
        )
    })?;
    Ok(0)
}

pub fn rm(state_dir: &Path, args: RmArgs) -> Result<u8> {
    let mut sb = match Sandbox::open(state_dir, &args.name) {
        Ok(sb) => sb,
        // No state: what a creator that died while starting it left (a
        // state directory, a cgroup), if anything.
        Err(e @ sandbox::Error::NotFound { .. }) => {
            let removed = Sandbox::remove_leftovers(state_dir, &args.name, args.force)?;
            if removed.is_empty() {
                return Err(e.into());
            }
            eprintln!("removed {}", removed.join(", "));
            return Ok(0);
        }
        Err(e) => return Err(e.into()),
    };
    if sb.is_running() {
        if !args.force {
            anyhow::bail!(
                "sandbox `{}` is running: stop it with `stasis kill {}` or use `stasis rm --force`",
                args.name,
                args.name
            );
        }
        sb.kill()?;
    }
    sb.remove()?;
    Ok(0)
}

pub fn exec(state_dir: &Path, args: ExecArgs) -> Result<u8> {
    let sb = Sandbox::open(state_dir, &args.name)?;
    let code = sb.exec(&args.command)?;
    Ok(exit_u8(code))
}

#[cfg(test)]
mod tests {
    use super::parse_signal;

    #[test]
    fn signals() {
        assert_eq!(parse_signal("TERM").unwrap(), libc::SIGTERM);
        assert_eq!(parse_signal("sigkill").unwrap(), libc::SIGKILL);
        assert_eq!(parse_signal("10").unwrap(), 10);
        assert!(parse_signal("NOPE").is_err());
    }
}
