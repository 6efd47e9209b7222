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

use std::io::Read;
use std::net::{Ipv4Addr, Shutdown, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A profile with a veth on a /30 of its own (10.X.Y.0/30, X from this
/// process, Y from a counter): the profile's path and the sandbox's address.
fn veth_profile(h: &Harness) -> (PathBuf, Ipv4Addr) {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let x = 200 + (std::process::id() % 50) as u8;
    let y = ((n * 4 + 128) % 256) as u8;
    let host = Ipv4Addr::new(10, x, y, 1);
    let inside = Ipv4Addr::new(10, x, y, 2);
    let path = h.root.join("veth.toml");
    std::fs::write(
        &path,
        format!(
            "[network.veth]\naddress = \"{inside}/30\"\nhost_address = \"{host}/30\"\n\
             routes = [{{ destination = \"default\", gateway = \"{host}\" }}]\n"
        ),
    )
    .expect("writing the profile");
    (path, inside)
}

/// A client on the host sends its request and shuts down writing; the
/// server in the sandbox is dumped in CLOSE_WAIT with the request unread.
/// After the restore it reads the request, then end of file, and answers;
/// the client gets the answer, then the server's FIN, over the same
/// connection.
#[test]
fn tcp_close_wait_host_client() {
    let h = Harness::new("tcp-closewait");
    if missing(&h, "tcp_close_wait_host_client", &["tcp-repair"]) {
        return;
    }
    let (profile, inside) = veth_profile(&h);
    let port = 7010;
    let argv = h.c_argv("tcp", &["halfserver", &port.to_string()]);
    let sb = run_with_profile(&h, &profile, &argv);
    let mut client = tcp_client::TcpClient::connect(SocketAddr::from((inside, port)));
    client
        .stream
        .shutdown(Shutdown::Write)
        .expect("shutting down the client's writing");
    h.wait_ready(&sb);
    let image = h.dump(&sb, &["--tcp-established"]);
    let restored = h.restore(&image);
    h.signal(&restored, "TERM");
    let mut answer = String::new();
    client
        .stream
        .read_to_string(&mut answer)
        .unwrap_or_else(|e| panic!("reading the answer: {e}\n{}", h.logs(&restored)));
    assert_eq!(answer, format!("OK {}\n", tcp_client::CLIENT_BYTES));
    let v = h.verdict(&restored);
    assert!(v.starts_with("PASS"), "{v}\n{}", h.logs(&restored));
}
