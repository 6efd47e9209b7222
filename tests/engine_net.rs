//! Sockets across a dump and restore: unix sockets of every kind, TCP
//! listeners, UDP, established TCP connections (--tcp-established), and real
//! servers (a threaded Python HTTP server, redis) answering after restore.

mod common;

use common::*;

/// Unix stream, datagram and seqpacket sockets: socketpairs, path and
/// abstract names, a listener with two clients waiting to be accepted, an
/// accepted connection, named datagram senders, a half-closed pair, an end
/// whose peer closed, a pair shared with a child, each with data queued.
#[test]
fn unix_sockets() {
    let h = Harness::new("unix");
    let sb = h.start_c("unix", &[]);
    let (image, restored) = h.dump_and_restore(&sb);
    let inspect = h.inspect_json(&image);
    let shown = inspect.to_string();
    assert!(
        shown.contains("unix seqpacket socket") && shown.contains("listening (2 waiting)"),
        "stasis inspect does not describe the sockets: {shown}"
    );
    h.expect_pass(&restored);
}
