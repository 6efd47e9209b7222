//! Signal state and vector registers across a dump and restore.

mod common;

use common::*;

/// Handlers with their flags and masks, blocked pending signals (process and
/// thread queues, realtime order and values), the alternate stack, an
/// ignored signal.
#[test]
fn handlers_pending_signals_altstack() {
    let h = Harness::new("signals");
    let sb = h.start_c("signals", &[]);
    let (_image, restored) = h.dump_and_restore(&sb);
    h.expect_pass(&restored);
}

/// zmm0-zmm31, k1-k7 and r12-r15 hold known values in a busy loop while the
/// workload is dumped and restored.
#[test]
fn avx512_registers() {
    // Skipped only where `stasis check` says the xstate lacks the AVX-512
    // components (XCR0 bits 5-7: opmask, ZMM_Hi256, Hi16_ZMM).
    let h0 = Harness::new("avx512-check");
    let out = h0.stasis(["check", "--json", "--feature", "ptrace-xstate"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let xcr0 = report["features"][0]["data"]["xcr0"]
        .as_str()
        .and_then(|x| u64::from_str_radix(x.trim_start_matches("0x"), 16).ok())
        .unwrap_or(0);
    if xcr0 & 0xe0 != 0xe0 || !cpu_has("avx512f") {
        eprintln!(
            "skipping avx512_registers: stasis check reports XCR0 {xcr0:#x}, without the AVX-512 states"
        );
        return;
    }
    let h = Harness::new("avx512");
    let sb = h.start_c("vecregs", &["avx512"]);
    let (_image, restored) = h.dump_and_restore(&sb);
    h.expect_pass(&restored);
}

/// ymm0-ymm15 and r12-r15 hold known values in a busy loop while the
/// workload is dumped and restored (AVX2: the vector state of CPUs without
/// AVX-512).
#[test]
fn avx2_registers() {
    if !cpu_has("avx2") {
        eprintln!("skipping avx2_registers: this CPU has no avx2 (see /proc/cpuinfo)");
        return;
    }
    let h = Harness::new("avx2");
    let sb = h.start_c("vecregs", &["avx2"]);
    let (_image, restored) = h.dump_and_restore(&sb);
    h.expect_pass(&restored);
}

/// Two processes stopped by job control (SIGSTOP, SIGTSTP) are stopped after
/// the restore, run nothing until SIGCONT, and count again after it.
#[test]
fn stopped_processes_stay_stopped() {
    let h = Harness::new("stopped");
    let sb = h.start_c("stopped", &[]);
    let (image, restored) = h.dump_and_restore(&sb);
    let stops: Vec<i64> = ["proc-3.json", "proc-4.json"]
        .iter()
        .map(|f| {
            let p: serde_json::Value =
                serde_json::from_slice(&std::fs::read(image.join(f)).expect("child image"))
                    .expect("JSON");
            p["core"]["stopped"].as_i64().unwrap_or(0)
        })
        .collect();
    assert_eq!(
        stops,
        vec![libc::SIGSTOP as i64, libc::SIGTSTP as i64],
        "the stop signals recorded"
    );
    h.expect_pass(&restored);
}
