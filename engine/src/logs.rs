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
