//! `stasis inspect --json`: the image shows the processes, memory areas and
//! fds the workload had.

mod common;

use common::*;
use serde_json::Value;

fn process(summary: &Value, pid: i64) -> &Value {
    summary["processes"]
        .as_array()
        .expect("processes in the inspect JSON")
        .iter()
        .find(|p| p["pid"].as_i64() == Some(pid))
        .unwrap_or_else(|| panic!("no process {pid} in the image: {summary:#}"))
}

fn fd(process: &Value, fd: i64) -> &Value {
    process["fds"]
        .as_array()
        .expect("fds of a process")
        .iter()
        .find(|f| f["fd"].as_i64() == Some(fd))
        .unwrap_or_else(|| panic!("no fd {fd} in process {}: {process:#}", process["pid"]))
}

fn has_fd(process: &Value, fd: i64) -> bool {
    process["fds"]
        .as_array()
        .is_some_and(|v| v.iter().any(|f| f["fd"].as_i64() == Some(fd)))
}

fn what(v: &Value) -> &str {
    v["what"].as_str().unwrap_or_default()
}

fn area_at(process: &Value, addr: u64) -> &Value {
    process["areas"]
        .as_array()
        .expect("areas of a process")
        .iter()
        .find(|a| {
            a["start"].as_u64().unwrap_or(u64::MAX) <= addr && addr < a["end"].as_u64().unwrap_or(0)
        })
        .unwrap_or_else(|| panic!("no area holds {addr:#x} in process {}", process["pid"]))
}

/// The pipe workload: two processes, parent and child, each with its end of
/// the one pipe at its fd number, holding the 40123 queued bytes.
#[test]
fn inspect_shows_processes_and_pipe() {
    let h = Harness::new("inspect-pipe");
    let sb = h.start_c("pipe", &[]);
    let child: i64 = read_trimmed(&h.path("ready"))
        .and_then(|s| s.parse().ok())
        .expect("child pid in DIR/ready");
    let image = h.dump(&sb, &[]);
    let s = h.inspect_json(&image);

    let root_pid = s["workload_pid"].as_i64().expect("workload_pid");
    assert_eq!(root_pid, 2, "the workload is PID 2 of its sandbox");
    let parent = process(&s, root_pid);
    let kid = process(&s, child);
    assert_eq!(
        kid["ppid"].as_i64(),
        Some(root_pid),
        "child's parent: {kid:#}"
    );
    let wend = fd(parent, 20);
    let rend = fd(kid, 21);
    assert!(
        what(wend).contains("pipe") && what(wend).contains("40123"),
        "parent fd 20: {wend}"
    );
    assert_eq!(what(wend), what(rend), "both ends show the same pipe");
    assert!(
        !has_fd(parent, 21) && !has_fd(kid, 20),
        "each process holds only its end"
    );
    for p in [parent, kid] {
        let areas = p["areas"].as_array().expect("areas");
        assert!(
            areas.iter().any(|a| what(a).ends_with("/pipe")),
            "no area maps the executable: {p:#}"
        );
        assert!(
            areas.iter().any(|a| what(a) == "[stack]"),
            "no [stack] area: {p:#}"
        );
        let saved: u64 = areas.iter().filter_map(|a| a["pages_saved"].as_u64()).sum();
        assert!(saved > 0, "no page saved for process {}", p["pid"]);
    }

    let mut c = h.command();
    let out = c
        .arg("inspect")
        .arg(&image)
        .output()
        .expect("running stasis inspect");
    assert!(out.status.success(), "stasis inspect: {}", describe(&out));
    assert!(
        text(&out.stdout).contains("40123"),
        "inspect's text: {}",
        text(&out.stdout)
    );

    // Inspecting changes nothing: the image still restores and passes.
    let restored = h.restore(&image);
    h.expect_pass(&restored);
}

/// The files workload: each fd with its path, offset, deletion and flags.
#[test]
fn inspect_shows_files() {
    let h = Harness::new("inspect-files");
    let sb = h.start_c("files", &[]);
    let image = h.dump(&sb, &[]);
    let s = h.inspect_json(&image);
    let p = process(&s, s["workload_pid"].as_i64().expect("workload_pid"));
    let dir = h.dir.display().to_string();

    assert_eq!(what(fd(p, 10)), format!("{dir}/data.dat at 3000"));
    assert!(
        what(fd(p, 11)).starts_with(&format!("{dir}/app.log at ")),
        "{}",
        fd(p, 11)
    );
    let del = fd(p, 12);
    assert!(
        what(del).contains("deleted.dat") && what(del).contains("(deleted"),
        "{del}"
    );
    assert!(what(del).contains(" at 4321"), "{del}");
    assert!(what(fd(p, 13)).starts_with("/dev/null"), "{}", fd(p, 13));
    assert_eq!(
        fd(p, 13)["cloexec"].as_bool(),
        Some(true),
        "fd 13 is close-on-exec"
    );
    assert!(what(fd(p, 14)).starts_with("/dev/zero"), "{}", fd(p, 14));
    assert_eq!(
        fd(p, 14)["cloexec"].as_bool(),
        Some(false),
        "fd 14 is not close-on-exec"
    );
    assert!(what(fd(p, 15)).starts_with(&dir), "{}", fd(p, 15));
}

/// The memory workload: the image's areas are /proc/PID/maps at ready, line
/// for line, and only pages that exist are saved (none of a never-touched
/// area or of a shared file mapping; only the written pages of a private
/// file mapping).
#[test]
fn inspect_shows_memory_areas() {
    let h = Harness::new("inspect-mem");
    let sb = h.start_c("memory", &[]);
    let image = h.dump(&sb, &[]);
    let s = h.inspect_json(&image);
    let p = process(&s, s["workload_pid"].as_i64().expect("workload_pid"));
    let areas = p["areas"].as_array().expect("areas");

    let maps = std::fs::read_to_string(h.path("maps-at-ready")).expect("DIR/maps-at-ready");
    let lines: Vec<&str> = maps
        .lines()
        .filter(|l| !l.ends_with("[vsyscall]"))
        .collect();
    for line in &lines {
        let mut f = line.split_whitespace();
        let (range, perms) = (f.next().unwrap(), f.next().unwrap());
        let (start, end) = range.split_once('-').unwrap();
        let (start, end) = (
            u64::from_str_radix(start, 16).unwrap(),
            u64::from_str_radix(end, 16).unwrap(),
        );
        let a = area_at(p, start);
        if what(a) == "[stack]" {
            continue; // it may have grown between ready and the dump
        }
        assert_eq!(
            (a["start"].as_u64(), a["end"].as_u64()),
            (Some(start), Some(end)),
            "area of maps line {line:?}: {a}"
        );
        assert_eq!(
            a["prot"].as_str(),
            Some(&perms[..3]),
            "maps line {line:?}: {a}"
        );
        assert_eq!(
            a["shared"].as_bool(),
            Some(perms.ends_with('s')),
            "maps line {line:?}: {a}"
        );
    }
    let kept = areas.iter().filter(|a| what(a) != "[vsyscall]").count();
    assert_eq!(
        kept,
        lines.len(),
        "the image has {kept} areas, maps had {}",
        lines.len()
    );

    let named = std::fs::read_to_string(h.path("areas")).expect("DIR/areas");
    let addr = |name: &str| -> u64 {
        let l = named
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .expect(name);
        u64::from_str_radix(
            l.split_whitespace()
                .nth(1)
                .unwrap()
                .trim_start_matches("0x"),
            16,
        )
        .unwrap()
    };
    let saved = |name: &str| {
        area_at(p, addr(name))["pages_saved"]
            .as_u64()
            .expect("pages_saved")
    };
    assert_eq!(
        saved("untouched"),
        0,
        "pages saved of the never-touched area"
    );
    assert_eq!(
        saved("shared-file"),
        0,
        "pages saved of the shared file mapping (the file holds them)"
    );
    assert_eq!(
        saved("private-file"),
        4,
        "pages saved of the private file mapping (4 written)"
    );
    assert!(
        saved("private") >= 16,
        "pages saved of the private anonymous area"
    );
    assert!(saved("prot-none") >= 4, "pages saved of the PROT_NONE area");
}
