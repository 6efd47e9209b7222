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
    if missing(&h, "unix_sockets", &["sock-diag-unix", "so-peek-off"]) {
        return;
    }
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

/// A dump with --leave-running reads every queue without consuming it:
/// the workload goes on and finds all its data, names and peers; a restore
/// of the image while it runs is refused rather than take its socket files.
#[test]
fn unix_sockets_leave_running() {
    let h = Harness::new("unix-leave");
    if missing(
        &h,
        "unix_sockets_leave_running",
        &["sock-diag-unix", "so-peek-off"],
    ) {
        return;
    }
    let sb = h.start_c("unix", &[]);
    let image = h.dump(&sb, &["--leave-running"]);
    // A restore beside the running workload must not take its socket files.
    let name = h.new_name("second");
    let out = h.restore_raw(&image, &name);
    let err = text(&out.stderr);
    assert!(
        !out.status.success(),
        "a restore took over the running workload's sockets: {}",
        describe(&out)
    );
    assert!(
        err.contains("l.sock") && err.contains("running socket"),
        "{err}"
    );
    h.expect_pass(&sb);
}

/// Seqpacket sockets holding empty records (real messages of their own),
/// ends whose peer shut down or closed (whose empty queue reads as end of
/// file, not as a record), an empty queue that can no longer receive: the
/// dump reads every queue once and ends, and each record comes back, in
/// order, with SO_PASSCRED as the program had it.
#[test]
fn unix_seqpacket_empty_records_and_shutdown() {
    let h = Harness::new("seqpacket");
    if missing(
        &h,
        "unix_seqpacket_empty_records_and_shutdown",
        &["sock-diag-unix", "so-peek-off"],
    ) {
        return;
    }
    let sb = h.start_c("seqpacket", &[]);
    let (image, restored) = h.dump_and_restore(&sb);
    let shown = h.inspect_json(&image).to_string();
    assert!(shown.contains("unix seqpacket socket"), "{shown}");
    h.expect_pass(&restored);
}

/// The same queues read by a dump that leaves the workload running: nothing
/// consumed, nothing changed.
#[test]
fn unix_seqpacket_empty_records_leave_running() {
    let h = Harness::new("seqpacket-live");
    if missing(
        &h,
        "unix_seqpacket_empty_records_leave_running",
        &["sock-diag-unix", "so-peek-off"],
    ) {
        return;
    }
    let sb = h.start_c("seqpacket", &[]);
    h.dump(&sb, &["--leave-running"]);
    h.expect_pass(&sb);
}

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A profile with a veth on a /30 of its own (10.X.Y.0/30, X from this
/// process, Y from a counter): returns the profile's path, the sandbox's
/// address and the host's.
fn veth_profile(h: &Harness) -> (PathBuf, Ipv4Addr, Ipv4Addr) {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let x = 200 + (std::process::id() % 50) as u8;
    let y = ((n * 4) % 256) as u8;
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

/// `stasis run -d --profile PROFILE -- ARGV`, then waits for ready.
fn start_with_profile<S: AsRef<std::ffi::OsStr>>(
    h: &Harness,
    profile: &Path,
    argv: &[S],
) -> String {
    let name = run_with_profile(h, profile, argv);
    h.wait_ready(&name);
    name
}

/// GET `path` from `addr` over HTTP/1.0; returns the body of a 200 answer.
fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("read timeout");
    write!(s, "GET {path} HTTP/1.0\r\nHost: sandbox\r\n\r\n").expect("sending a request");
    let mut reply = String::new();
    s.read_to_string(&mut reply)
        .unwrap_or_else(|e| panic!("reading the answer to GET {path} from {addr}: {e}"));
    let (head, body) = reply
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("GET {path}: no HTTP answer: {reply:?}"));
    assert!(
        head.starts_with("HTTP/1.0 200"),
        "GET {path} from {addr}: {head}"
    );
    body.to_string()
}

/// TCP listeners (IPv4, IPv6-only, dual-stack) with their options and
/// backlog, UDP sockets bound and connected, a bound TCP socket and an
/// unbound one: addresses and options survive, and every one works.
#[test]
fn tcp_listeners_and_udp() {
    let h = Harness::new("inet");
    let sb = h.start_c("inet", &[]);
    let (_image, restored) = h.dump_and_restore(&sb);
    h.expect_pass(&restored);
}

/// A threaded Python HTTP server (http.server's ThreadingHTTPServer) on the
/// sandbox's veth answers the host before the dump and, with the same data
/// and counter, after the restore.
#[test]
fn python_http_server() {
    let h = Harness::new("pyhttp");
    let (profile, inside, _) = veth_profile(&h);
    let port = 8080;
    let script = Path::new(WORKLOADS).join("httpserver.py");
    let argv: Vec<std::ffi::OsString> = vec![
        python3().into(),
        script.into(),
        port.to_string().into(),
        h.dir.clone().into(),
    ];
    let sb = start_with_profile(&h, &profile, &argv);
    let addr = SocketAddr::from((inside, port));
    assert_eq!(http_get(addr, "/hits"), "1");
    assert_eq!(http_get(addr, "/hits"), "2");
    let item = http_get(addr, "/item/1999");
    let seed = http_get(addr, "/seed");
    let (_image, restored) = h.dump_and_restore(&sb);
    assert_eq!(
        http_get(addr, "/seed"),
        seed,
        "the restored server has another seed"
    );
    assert_eq!(http_get(addr, "/item/1999"), item);
    assert_eq!(
        http_get(addr, "/hits"),
        "3",
        "the hit counter did not go on"
    );
    // A few at once: one thread each.
    let answers: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|i| s.spawn(move || http_get(addr, &format!("/item/{}", i * 100))))
            .collect();
        hs.into_iter()
            .map(|t| t.join().expect("a request thread"))
            .collect()
    });
    assert_eq!(answers.len(), 8);
    assert!(answers.iter().all(|a| a.len() == 64), "{answers:?}");
    let v = h.expect_pass(&restored);
    assert_eq!(verdict_field(&v, "hits"), Some("3"), "{v}");
}

/// Established TCP connections inside the sandbox (IPv4 and IPv6 over
/// loopback, between two processes), with data queued both ways: refused
/// without --tcp-established (naming the connection, the workload going on),
/// carried with it.
#[test]
fn tcp_established_inside() {
    let h = Harness::new("tcp-inside");
    if missing(&h, "tcp_established_inside", &["tcp-repair"]) {
        return;
    }
    let sb = h.start_c("tcp", &["loopback"]);
    let image = h.image_path();
    let out = h.dump_raw(&sb, &image, &[]);
    let err = text(&out.stderr);
    assert!(
        !out.status.success(),
        "dump without --tcp-established: {}",
        describe(&out)
    );
    for w in [
        "established TCP connection",
        "127.0.0.1:",
        "--tcp-established",
        "process ",
    ] {
        assert!(err.contains(w), "the refusal does not mention {w:?}: {err}");
    }
    assert!(h.ps_lists(&sb), "the workload is gone after a refused dump");
    let image = h.dump(&sb, &["--tcp-established"]);
    let restored = h.restore(&image);
    h.expect_pass(&restored);
}

fn ready_number(h: &Harness) -> usize {
    read_number(&h.path("ready")).expect("the ready file holds a number") as usize
}

/// A client on the host keeps its TCP connection to a server in the
/// sandbox across a dump (--tcp-established) and restore: what the server
/// had written and what the client had sent are all delivered, in order,
/// and the connection goes on; the client never sees a reset.
#[test]
fn tcp_established_host_client() {
    let h = Harness::new("tcp-host");
    if missing(&h, "tcp_established_host_client", &["tcp-repair"]) {
        return;
    }
    let (profile, inside, _) = veth_profile(&h);
    let port = 7000;
    let argv = h.c_argv("tcp", &["server", &port.to_string()]);
    let sb = run_with_profile(&h, &profile, &argv);
    let mut client = tcp_client::TcpClient::connect(SocketAddr::from((inside, port)));
    h.wait_ready(&sb);
    let wrote = ready_number(&h);
    let image = h.dump(&sb, &["--tcp-established"]);
    let shown = h.inspect_json(&image).to_string();
    assert!(shown.contains("established ("), "inspect: {shown}");
    let restored = h.restore(&image);
    client.go_on(wrote);
    h.signal(&restored, "TERM");
    let line = client.last_line();
    assert_eq!(
        line,
        format!("OK {}", tcp_client::CLIENT_BYTES + tcp_client::MORE_BYTES)
    );
    let v = h.verdict(&restored);
    assert!(v.starts_with("PASS"), "{v}\n{}", h.logs(&restored));
}

/// With --leave-running the connection is taken out of repair mode and the
/// workload goes on with it.
#[test]
fn tcp_established_leave_running() {
    let h = Harness::new("tcp-leave");
    if missing(&h, "tcp_established_leave_running", &["tcp-repair"]) {
        return;
    }
    let (profile, inside, _) = veth_profile(&h);
    let port = 7001;
    let argv = h.c_argv("tcp", &["server", &port.to_string()]);
    let sb = run_with_profile(&h, &profile, &argv);
    let mut client = tcp_client::TcpClient::connect(SocketAddr::from((inside, port)));
    h.wait_ready(&sb);
    let wrote = ready_number(&h);
    let _image = h.dump(&sb, &["--tcp-established", "--leave-running"]);
    client.go_on(wrote);
    h.signal(&sb, "TERM");
    assert_eq!(
        client.last_line(),
        format!("OK {}", tcp_client::CLIENT_BYTES + tcp_client::MORE_BYTES)
    );
    let v = h.verdict(&sb);
    assert!(v.starts_with("PASS"), "{v}\n{}", h.logs(&sb));
}

/// Sends RESP commands (each a list of words) in one write and reads one
/// reply line per command (bulk replies: the line after the length).
fn redis(addr: SocketAddr, cmds: &[Vec<String>]) -> Vec<String> {
    use std::io::BufRead;
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .unwrap_or_else(|e| panic!("connecting to redis at {addr}: {e}"));
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("read timeout");
    let mut out = Vec::new();
    for c in cmds {
        out.extend_from_slice(format!("*{}\r\n", c.len()).as_bytes());
        for w in c {
            out.extend_from_slice(format!("${}\r\n{w}\r\n", w.len()).as_bytes());
        }
    }
    s.write_all(&out).expect("sending to redis");
    let mut r = std::io::BufReader::new(s);
    let mut replies = Vec::with_capacity(cmds.len());
    for _ in cmds {
        let mut line = String::new();
        r.read_line(&mut line).expect("reading a redis reply");
        if line.starts_with('$') && !line.starts_with("$-1") {
            line.clear();
            r.read_line(&mut line).expect("reading a redis bulk reply");
        }
        replies.push(line.trim_end().to_string());
    }
    replies
}

fn words(ws: &[&str]) -> Vec<String> {
    ws.iter().map(|w| w.to_string()).collect()
}

/// redis-server (Debian's package) on the sandbox's veth, holding 10,000
/// keys loaded before the dump, answers after the restore with all of them
/// and goes on taking writes (its epoll, listener and timers come back too).
#[test]
fn redis_server() {
    let h = Harness::new("redis");
    let (profile, inside, _) = veth_profile(&h);
    let argv = [
        "/usr/bin/redis-server",
        "--port",
        "6379",
        "--bind",
        "0.0.0.0",
        "--protected-mode",
        "no",
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
    ];
    let sb = run_with_profile(&h, &profile, &argv);
    let addr = SocketAddr::from((inside, 6379));
    wait_until(
        "redis to answer PING",
        READY_TIMEOUT,
        || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                && redis(addr, &[words(&["PING"])]) == ["+PONG"]
        },
        || h.logs(&sb),
    );
    let n = 10_000;
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let cmds: Vec<Vec<String>> = chunk
            .iter()
            .map(|i| words(&["SET", &format!("key:{i}"), &format!("value-{}", i * 7919)]))
            .collect();
        assert!(redis(addr, &cmds).iter().all(|r| r == "+OK"));
    }
    assert_eq!(redis(addr, &[words(&["DBSIZE"])]), [format!(":{n}")]);
    // Dump an idle server: until redis has closed its side of the loader's
    // connections they sit in CLOSE_WAIT, which a dump without
    // --tcp-established refuses.
    let init = h
        .ps_json()
        .as_array()
        .and_then(|a| a.iter().find(|e| e["name"] == sb.as_str()))
        .and_then(|e| e["init_pid"].as_i64())
        .expect("init_pid of the redis sandbox");
    wait_until(
        "redis to close its client connections",
        READY_TIMEOUT,
        || {
            std::fs::read_to_string(format!("/proc/{init}/net/tcp"))
                .map(|t| {
                    !t.lines().skip(1).any(|l| {
                        let f: Vec<&str> = l.split_whitespace().collect();
                        f.len() > 3 && f[1].ends_with(":18EB") && f[3] != "0A"
                    })
                })
                .unwrap_or(false)
        },
        || h.logs(&sb),
    );
    let (_image, restored) = h.dump_and_restore(&sb);
    assert_eq!(
        redis(addr, &[words(&["DBSIZE"])]),
        [format!(":{n}")],
        "{}",
        h.logs(&restored)
    );
    let probe: Vec<usize> = (0..n).step_by(97).collect();
    let cmds: Vec<Vec<String>> = probe
        .iter()
        .map(|i| words(&["GET", &format!("key:{i}")]))
        .collect();
    let got = redis(addr, &cmds);
    for (i, v) in probe.iter().zip(&got) {
        assert_eq!(v, &format!("value-{}", i * 7919), "key:{i}");
    }
    assert_eq!(
        redis(
            addr,
            &[
                words(&["SET", "after", "restore"]),
                words(&["GET", "after"])
            ]
        ),
        ["+OK", "restore"]
    );
    // Inside the sandbox too, through its own client.
    let out = h.stasis([
        "exec",
        &restored,
        "--",
        "/usr/bin/redis-cli",
        "-h",
        "127.0.0.1",
        "DBSIZE",
    ]);
    assert!(out.status.success(), "redis-cli: {}", describe(&out));
    assert_eq!(text(&out.stdout).trim(), (n + 1).to_string());
}

/// A unix socket connected to a socket outside the sandbox's tree (a
/// listener of the test's own, on the host) is refused, naming the process
/// and fd, and the workload goes on.
#[test]
fn refuses_unix_peer_outside() {
    let h = Harness::new("unix-outside");
    let path = h.path("outside.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).expect("binding a listener");
    let script = "import socket, sys, time\n\
                  s = socket.socket(socket.AF_UNIX)\n\
                  s.connect(sys.argv[1])\n\
                  open(sys.argv[2] + '/ready', 'w').write('1')\n\
                  time.sleep(600)\n";
    let argv: Vec<std::ffi::OsString> = vec![
        python3().into(),
        "-c".into(),
        script.into(),
        path.clone().into(),
        h.dir.clone().into(),
    ];
    let sb = h.start(&argv);
    let (_conn, _) = listener
        .accept()
        .expect("accepting the workload's connection");
    let image = h.image_path();
    let out = h.dump_raw(&sb, &image, &[]);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "dump succeeded: {}", describe(&out));
    for w in [
        "process 2",
        "fd 3",
        "unix socket connected to a socket outside the sandbox's tree",
    ] {
        assert!(err.contains(w), "the refusal does not mention {w:?}: {err}");
    }
    assert!(
        !image.join("manifest.json").exists(),
        "a refused dump left an image"
    );
    assert!(h.ps_lists(&sb), "the workload is gone after a refused dump");
}

/// Netlink sockets: an autobound route socket in two multicast groups with
/// NETLINK_EXT_ACK, and one bound to a port id of its own and connected to
/// the kernel, come back with their port ids, groups and options, and still
/// get the kernel's answers.
#[test]
fn netlink_sockets() {
    let h = Harness::new("netlink");
    let sb = h.start_c("netlink", &[]);
    let (image, restored) = h.dump_and_restore(&sb);
    let files: serde_json::Value =
        serde_json::from_slice(&std::fs::read(image.join("files.json")).expect("files.json"))
            .expect("JSON");
    let netlinks = files["sockets"]
        .as_array()
        .expect("sockets")
        .iter()
        .filter(|s| s["netlink"].is_object())
        .count();
    assert_eq!(netlinks, 2, "{}", files["sockets"]);
    h.expect_pass(&restored);
}
