//! The host side of the `tcp server` workload (tests/workloads/tcp.c): a
//! client that connects, sends CLIENT_BYTES, and after the workload's ready
//! (and, in the tests, after a dump and restore) reads what the server
//! wrote, sends MORE_BYTES, and reads the server's "OK" after SIGTERM.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

pub const CLIENT_BYTES: usize = 5000;
pub const MORE_BYTES: usize = 3000;
const TIMEOUT: Duration = Duration::from_secs(20);

/// Byte `i` of the workloads' pattern with `seed` (wl.h's wl_pat).
pub fn pat(i: usize, seed: u32) -> u8 {
    let x = (i as u32).wrapping_mul(2654435761)
        ^ seed.wrapping_mul(40503)
        ^ ((i >> 12) as u32).wrapping_mul(97);
    (x ^ x >> 13 ^ x >> 24) as u8
}

fn pattern(from: usize, n: usize, seed: u32) -> Vec<u8> {
    (from..from + n).map(|i| pat(i, seed)).collect()
}

pub struct TcpClient {
    pub stream: TcpStream,
    pub addr: SocketAddr,
}

impl TcpClient {
    /// Connects (retrying while the server is not listening yet) and sends
    /// the first CLIENT_BYTES.
    pub fn connect(addr: SocketAddr) -> TcpClient {
        let deadline = Instant::now() + TIMEOUT;
        let stream = loop {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("connecting to {addr}: {e}"),
            }
        };
        stream
            .set_read_timeout(Some(TIMEOUT))
            .expect("read timeout");
        stream
            .set_write_timeout(Some(TIMEOUT))
            .expect("write timeout");
        let mut c = TcpClient { stream, addr };
        c.stream
            .write_all(&pattern(0, CLIENT_BYTES, 2))
            .unwrap_or_else(|e| panic!("sending to {addr}: {e}"));
        c
    }

    /// Reads the `wrote` bytes the server wrote before its ready, checks
    /// them, and sends the next MORE_BYTES.
    pub fn go_on(&mut self, wrote: usize) {
        let mut got = vec![0u8; wrote];
        self.stream.read_exact(&mut got).unwrap_or_else(|e| {
            panic!(
                "reading the {wrote} bytes the server at {} wrote: {e}",
                self.addr
            )
        });
        let want = pattern(0, wrote, 1);
        if let Some(i) = (0..wrote).find(|&i| got[i] != want[i]) {
            panic!(
                "byte {i} of {wrote} from the server is {:#x}, expected {:#x}",
                got[i], want[i]
            );
        }
        self.stream
            .write_all(&pattern(CLIENT_BYTES, MORE_BYTES, 2))
            .unwrap_or_else(|e| panic!("sending to {}: {e}", self.addr));
    }

    /// The server's last line ("OK <n>").
    pub fn last_line(&mut self) -> String {
        let mut line = String::new();
        BufReader::new(&mut self.stream)
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("reading the server's answer: {e}"));
        line.trim().to_string()
    }
}
