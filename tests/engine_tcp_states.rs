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

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A profile with a veth on a /30 of its own (10.X.Y.0/30, X from this
/// process, Y from a counter): the profile's path, the sandbox's address
/// and the host's.
fn veth_profile(h: &Harness) -> (PathBuf, Ipv4Addr, Ipv4Addr) {
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
    (path, inside, host)
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
    let (profile, inside, _) = veth_profile(&h);
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

/// A listener on the host (all addresses, a port of the kernel's choosing)
/// whose accept queue is full (backlog 0, one connection waiting): SYNs to
/// it get no answer.
fn full_listener() -> (std::net::TcpListener, std::net::TcpStream) {
    use std::os::fd::FromRawFd;
    // SAFETY: socket(2); the result is checked and owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is new and ours.
    let l = unsafe { std::net::TcpListener::from_raw_fd(fd) };
    // SAFETY: an all-zero sockaddr_in is valid (0.0.0.0, port 0).
    let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sin.sin_family = libc::AF_INET as u16;
    // SAFETY: bind and listen on our socket with a sockaddr_in we built.
    let ok = unsafe {
        libc::bind(
            fd,
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        ) == 0
            && libc::listen(fd, 0) == 0
    };
    assert!(ok, "listening: {}", std::io::Error::last_os_error());
    let port = l.local_addr().expect("local address").port();
    let filler =
        std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connecting the filler");
    (l, filler)
}

/// A connect in progress (SYN_SENT) to a host listener whose queue is full:
/// refused without --tcp-established; with it, dumped and restored, the
/// connect goes on retransmitting its SYN and completes once the listener
/// has room; the workload finds its connect done, its peer and O_NONBLOCK,
/// and exchanges a message.
#[test]
fn tcp_syn_sent_host_listener() {
    let h = Harness::new("tcp-synsent");
    if missing(&h, "tcp_syn_sent_host_listener", &["tcp-repair"]) {
        return;
    }
    let (profile, _, host) = veth_profile(&h);
    let (listener, filler) = full_listener();
    let port = listener.local_addr().expect("local address").port();
    let argv = h.c_argv("tcp", &["synsent", &host.to_string(), &port.to_string()]);
    let sb = run_with_profile(&h, &profile, &argv);
    h.wait_ready(&sb);
    let out = h.dump_raw(&sb, &h.image_path(), &[]);
    let err = text(&out.stderr);
    assert!(
        !out.status.success(),
        "dump without --tcp-established: {}",
        describe(&out)
    );
    assert!(err.contains("in state SYN_SENT"), "{err}");
    let image = h.dump(&sb, &["--tcp-established"]);
    let restored = h.restore(&image);
    // Room in the queue: the next SYN is answered.
    let (first, _) = listener.accept().expect("accepting the filler");
    drop((first, filler));
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    let mut conn = None;
    wait_until(
        "the restored connect to reach the listener",
        READY_TIMEOUT,
        || {
            conn = listener.accept().ok();
            conn.is_some()
        },
        || h.logs(&restored),
    );
    let (mut conn, from) = conn.expect("accepted");
    assert_eq!(from.ip(), std::net::IpAddr::V4(inside_of(host)));
    conn.set_nonblocking(false).expect("blocking connection");
    conn.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .expect("read timeout");
    h.signal(&restored, "TERM");
    let mut hello = [0u8; 6];
    conn.read_exact(&mut hello)
        .unwrap_or_else(|e| panic!("reading HELLO: {e}\n{}", h.logs(&restored)));
    assert_eq!(&hello, b"HELLO\n");
    conn.write_all(b"OK\n").expect("answering");
    let v = h.verdict(&restored);
    assert!(v.starts_with("PASS"), "{v}\n{}", h.logs(&restored));
}

/// The sandbox's address on the /30 whose host address is `host`.
fn inside_of(host: Ipv4Addr) -> Ipv4Addr {
    let o = host.octets();
    Ipv4Addr::new(o[0], o[1], o[2], o[3] + 1)
}

/// Connections of the tree waiting in listeners' accept queues (IPv4 and
/// IPv6) come back queued: the restored listeners accept them, from the
/// same clients, and they carry messages both ways.
#[test]
fn tcp_waiting_in_accept_queue() {
    let h = Harness::new("tcp-unaccepted");
    if missing(&h, "tcp_waiting_in_accept_queue", &["tcp-repair"]) {
        return;
    }
    let sb = h.start_c("tcp", &["unaccepted"]);
    let out = h.dump_raw(&sb, &h.image_path(), &[]);
    assert!(
        !out.status.success(),
        "dump without --tcp-established: {}",
        describe(&out)
    );
    let image = h.dump(&sb, &["--tcp-established"]);
    let restored = h.restore(&image);
    h.expect_pass(&restored);
}

/// A waiting connection whose client already sent a request is refused
/// (its bytes could be read only by accepting it), naming the listener and
/// the client; the workload goes on and accepts it.
#[test]
fn tcp_waiting_with_data_refused() {
    let h = Harness::new("tcp-unaccepted-data");
    if missing(&h, "tcp_waiting_with_data_refused", &["tcp-repair"]) {
        return;
    }
    let sb = h.start_c("tcp", &["unaccepted", "data"]);
    let image = h.image_path();
    let out = h.dump_raw(&sb, &image, &["--tcp-established"]);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "dump succeeded: {}", describe(&out));
    for w in [
        "listening on 127.0.0.1:",
        "waiting to be accepted",
        "100 bytes",
    ] {
        assert!(err.contains(w), "the refusal does not mention {w:?}: {err}");
    }
    assert!(
        !image.join("manifest.json").exists(),
        "a refused dump left an image"
    );
    h.expect_pass(&sb);
}

/// A dump with --leave-running takes the half-closed and closing
/// connections out of repair mode untouched: the workload goes on with
/// every state, byte and end of file where it was.
#[test]
fn tcp_half_closed_leave_running() {
    let h = Harness::new("tcp-half-live");
    if missing(&h, "tcp_half_closed_leave_running", &["tcp-repair"]) {
        return;
    }
    let sb = h.start_c("tcp", &["halfclosed"]);
    h.dump(&sb, &["--tcp-established", "--leave-running"]);
    h.expect_pass(&sb);
}
