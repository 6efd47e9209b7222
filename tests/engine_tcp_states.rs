//! TCP connections in the states a busy server holds them, across a dump
//! (--tcp-established) and restore: half-closed and closing connections
//! (FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, LAST_ACK, CLOSING).

mod common;

use common::*;

/// Connections over loopback (IPv4 and IPv6) in every closing state, with
/// data queued behind the FINs: each side finds its state, its data then
/// end of file, EPIPE after its own shutdown, and a half-closed connection
/// still carries an answer the other way.
#[test]
fn tcp_half_closed_inside() {
    let h = Harness::new("tcp-half");
    if missing(&h, "tcp_half_closed_inside", &["tcp-repair"]) {
        return;
    }
    let sb = h.start_c("tcp", &["halfclosed"]);
    let image = h.image_path();
    let out = h.dump_raw(&sb, &image, &[]);
    let err = text(&out.stderr);
    assert!(
        !out.status.success(),
        "dump without --tcp-established: {}",
        describe(&out)
    );
    assert!(
        err.contains("in state") && err.contains("--tcp-established"),
        "the refusal does not name the state and the option: {err}"
    );
    assert!(h.ps_lists(&sb), "the workload is gone after a refused dump");
    let image = h.dump(&sb, &["--tcp-established"]);
    let shown = h.inspect_json(&image).to_string();
    for st in [
        "CLOSE_WAIT",
        "FIN_WAIT1",
        "FIN_WAIT2",
        "LAST_ACK",
        "CLOSING",
    ] {
        assert!(shown.contains(st), "inspect does not show {st}: {shown}");
    }
    let restored = h.restore(&image);
    h.expect_pass(&restored);
}
