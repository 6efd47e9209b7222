//! The sandbox's log in the image (`log.img`): what the workload wrote to
//! its stdout and stderr before the dump, so that the restored sandbox's log
//! starts with it and goes on from there. The dump copies the log while the
//! tree is stopped, at most [`MAX_LOG_BYTES`] of its end (cut at a line
//! boundary, after a line saying how much was left out); the restore checks
//! the size before anything is made and copies the file, verifying its
//! checksum as it reads, into the new sandbox's log before the tree runs.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::error::{Error, Result};
use crate::image::{ImageReader, ImageWriter};

/// Name of the log in the image.
pub const LOG_FILE: &str = "log.img";
/// Most bytes of the log an image holds (its end).
pub const MAX_LOG_BYTES: u64 = 16 << 20;
/// Bytes copied at a time.
const CHUNK: usize = 1 << 20;

fn io(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |cause| Error::Io { what, cause }
}

/// Copies the end of the sandbox's log at `log` into the image.
pub fn dump(log: &Path, writer: &mut ImageWriter) -> Result<()> {
    let mut f = match File::open(log) {
        Ok(f) => f,
        // A sandbox without a log (removed by hand) has nothing to carry.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(format!("opening the log {}", log.display()))(e)),
    };
    let size = f
        .metadata()
        .map_err(io(format!("stat of the log {}", log.display())))?
        .len();
    if size == 0 {
        // Nothing to carry, and no file (and its sync) to write.
        return Ok(());
    }
    let mut sink = writer.create_file(LOG_FILE)?;
    let mut buf = vec![0u8; CHUNK];
    let mut left = size;
    if size > MAX_LOG_BYTES {
        // Keep whole lines: skip to the first line that starts inside the
        // part kept, leaving room for the note.
        let note_room = 128;
        let mut from = size - MAX_LOG_BYTES + note_room;
        f.seek(SeekFrom::Start(from))
            .map_err(io(format!("seeking in the log {}", log.display())))?;
        let n = f
            .read(&mut buf[..4096])
            .map_err(io(format!("reading the log {}", log.display())))?;
        if let Some(nl) = buf[..n].iter().position(|&b| b == b'\n') {
            from += nl as u64 + 1;
        }
        let note = format!("[stasis: the first {from} bytes of this log were not kept]\n");
        sink.write_all(note.as_bytes())?;
        f.seek(SeekFrom::Start(from))
            .map_err(io(format!("seeking in the log {}", log.display())))?;
        left = size - from;
    }
    while left > 0 {
        let want = (left as usize).min(CHUNK);
        let n = f
            .read(&mut buf[..want])
            .map_err(io(format!("reading the log {}", log.display())))?;
        if n == 0 {
            break;
        }
        sink.write_all(&buf[..n])?;
        left -= n as u64;
    }
    writer.commit_file(sink)?;
    Ok(())
}

/// Refuses an image whose log is larger than any dump writes.
pub fn validate(reader: &ImageReader) -> Result<()> {
    match reader.file_size(LOG_FILE) {
        Some(n) if n > MAX_LOG_BYTES => Err(Error::BadImage {
            path: reader.dir().join(LOG_FILE),
            reason: format!("a log of {n} bytes, more than the {MAX_LOG_BYTES} a dump keeps"),
        }),
        _ => Ok(()),
    }
}

/// Appends the image's log (verified as it is read) to the new sandbox's
/// log at `log`. Images without one leave the log as it is.
pub fn restore(reader: &ImageReader, log: &Path) -> Result<()> {
    if reader.file_size(LOG_FILE).is_none() {
        return Ok(());
    }
    validate(reader)?;
    let src = reader.open_streamed(LOG_FILE)?;
    let mut out = OpenOptions::new()
        .append(true)
        .open(log)
        .map_err(io(format!("opening the log {}", log.display())))?;
    let mut buf = vec![0u8; CHUNK.min(src.size() as usize).max(1)];
    src.read_verified(&mut buf, |_, piece| {
        out.write_all(piece)
            .map_err(io(format!("writing the log {}", log.display())))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::CpuFeatures;

    fn roundtrip(log: &[u8]) -> Vec<u8> {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("log");
        std::fs::write(&src, log).unwrap();
        let dir = tmp.path().join("img");
        let mut w = ImageWriter::create(&dir).unwrap();
        dump(&src, &mut w).unwrap();
        w.finish(CpuFeatures {
            xcr0: 0xe7,
            xstate_size: 2432,
            flags: Vec::new(),
        })
        .unwrap();
        let r = ImageReader::open(&dir).unwrap();
        r.verify_all().unwrap();
        validate(&r).unwrap();
        let out = tmp.path().join("new-log");
        std::fs::write(&out, b"").unwrap();
        restore(&r, &out).unwrap();
        std::fs::read(&out).unwrap()
    }

    #[test]
    fn small_log_comes_back_whole() {
        let log = b"one\ntwo\nthree, no newline";
        assert_eq!(roundtrip(log), log);
        assert_eq!(roundtrip(b""), b"");
    }

    #[test]
    fn large_log_keeps_its_end_in_whole_lines() {
        let mut log = Vec::new();
        let mut i = 0u64;
        while log.len() as u64 <= MAX_LOG_BYTES + (3 << 20) {
            log.extend_from_slice(format!("line {i} of the log\n").as_bytes());
            i += 1;
        }
        let got = roundtrip(&log);
        assert!(
            got.len() as u64 <= MAX_LOG_BYTES,
            "{} bytes kept",
            got.len()
        );
        let nl = got.iter().position(|&b| b == b'\n').unwrap();
        let note = std::str::from_utf8(&got[..nl]).unwrap();
        let skipped: usize = note
            .strip_prefix("[stasis: the first ")
            .and_then(|r| r.strip_suffix(" bytes of this log were not kept]"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("note: {note}"));
        assert_eq!(&got[nl + 1..], &log[skipped..], "the rest is the log's end");
        assert_eq!(log[skipped - 1], b'\n', "cut at a line boundary");
        assert!(got.len() as u64 > MAX_LOG_BYTES - 4096);
    }
}
