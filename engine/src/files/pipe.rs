//! Pipes and FIFOs. Dump reads the unread data without consuming it: tee()
//! from a read end of the pipe (opened anew through /proc, so it exists even
//! when only writers remain) into a pipe of our own. Restore creates each
//! pipe once, sizes it, refills it, and hands out its ends.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;

use crate::error::{Error, Result};
use crate::image::{limits, Blob, PageSink, PipeImage};

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |cause| Error::Io { what, cause }
}

fn pipe2(flags: i32) -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 writes two fds into the array we pass.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), flags | libc::O_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn pipe_size(fd: &OwnedFd) -> std::io::Result<u64> {
    // SAFETY: F_GETPIPE_SZ on an fd we own.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETPIPE_SZ) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r as u64)
    }
}

fn set_pipe_size(fd: &OwnedFd, size: u64) -> std::io::Result<u64> {
    // SAFETY: F_SETPIPE_SZ on an fd we own.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, size as i32) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r as u64)
    }
}

pub fn collect(
    pid: i32,
    fd: i32,
    dup: &OwnedFd,
    ino: u64,
    id: u32,
    blobs: &mut PageSink,
) -> Result<PipeImage> {
    let capacity =
        pipe_size(dup).map_err(io_err(format!("process {pid}: F_GETPIPE_SZ of fd {fd}")))?;
    let reader = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(format!("/proc/{pid}/fd/{fd}"))
        .map_err(io_err(format!(
            "process {pid}: opening a read end of the pipe at fd {fd}"
        )))?;
    let (our_r, our_w) = pipe2(libc::O_NONBLOCK).map_err(io_err("pipe2".into()))?;
    set_pipe_size(&our_w, capacity.max(4096)).map_err(io_err(format!(
        "process {pid}: sizing a pipe of {capacity} bytes for fd {fd}"
    )))?;
    // SAFETY: tee between two pipe fds we hold; it copies buffer references
    // without consuming the source.
    let n = unsafe {
        libc::tee(
            reader.as_raw_fd(),
            our_w.as_raw_fd(),
            capacity as usize,
            libc::SPLICE_F_NONBLOCK,
        )
    };
    let n = if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EAGAIN) {
            0
        } else {
            return Err(io_err(format!("process {pid}: tee of the pipe at fd {fd}"))(e));
        }
    } else {
        n as usize
    };
    let mut data = vec![0u8; n];
    let mut got = 0;
    while got < n {
        // SAFETY: reading into our own buffer from our own pipe.
        let r = unsafe { libc::read(our_r.as_raw_fd(), data[got..].as_mut_ptr().cast(), n - got) };
        if r <= 0 {
            return Err(io_err(format!(
                "process {pid}: reading pipe data of fd {fd}"
            ))(std::io::Error::last_os_error()));
        }
        got += r as usize;
    }
    let offset = blobs.position();
    blobs.write_all(&data)?;
    Ok(PipeImage {
        id,
        ino,
        capacity,
        data: Blob {
            offset,
            len: n as u64,
        },
    })
}

use std::os::unix::fs::OpenOptionsExt;

struct Made {
    read: Option<OwnedFd>,
    write: Option<OwnedFd>,
    /// A descriptor through which more ends can be opened (/proc/self/fd/N).
    anchor: OwnedFd,
    ends_given: (bool, bool),
}

/// The pipes of a restore.
pub struct PipeSet {
    made: Vec<Option<Made>>,
    images: Vec<PipeImage>,
    blobs_fd: Option<i32>,
    holders: Vec<OwnedFd>,
}

impl PipeSet {
    pub fn create(images: &[PipeImage], blobs: Option<&File>) -> Result<Self> {
        Ok(PipeSet {
            made: images.iter().map(|_| None).collect(),
            images: images.to_vec(),
            blobs_fd: blobs.map(|b| b.as_raw_fd()),
            holders: Vec::new(),
        })
    }

    fn data(&self, img: &PipeImage) -> Result<Vec<u8>> {
        if img.data.len > limits::MAX_PIPE_BYTES || img.data.len > img.capacity.max(65536) {
            return Err(Error::Other(format!(
                "image: pipe {} holds {} bytes, more than its capacity",
                img.id, img.data.len
            )));
        }
        let mut buf = vec![0u8; img.data.len as usize];
        if !buf.is_empty() {
            let fd = self
                .blobs_fd
                .ok_or_else(|| Error::Other("image: blobs.img missing".into()))?;
            // SAFETY: borrowing the blobs fd as a File without taking ownership.
            let f = std::mem::ManuallyDrop::new(unsafe { File::from_raw_fd(fd) });
            f.read_exact_at(&mut buf, img.data.offset)
                .map_err(io_err(format!("reading data of pipe {}", img.id)))?;
        }
        Ok(buf)
    }

    fn make(&mut self, id: u32, fifo: Option<&str>) -> Result<()> {
        let idx = id as usize;
        if idx >= self.made.len() {
            return Err(Error::Other(format!("image: pipe {id} does not exist")));
        }
        if self.made[idx].is_some() {
            return Ok(());
        }
        let img = self.images[idx].clone();
        let data = self.data(&img)?;
        let (r, w, anchor) = match fifo {
            None => {
                let (r, w) = pipe2(0).map_err(io_err("pipe2".into()))?;
                let anchor = r.try_clone().map_err(io_err("dup".into()))?;
                (Some(r), Some(w), anchor)
            }
            Some(link) if link.ends_with(DELETED_FIFO) => (
                None,
                None,
                deleted_fifo(link.trim_end_matches(DELETED_FIFO))?,
            ),
            Some(path) => {
                // O_RDWR on a FIFO never blocks and keeps it open for the refill.
                let h: OwnedFd = File::options()
                    .read(true)
                    .write(true)
                    .open(path)
                    .map_err(io_err(format!("opening FIFO {path}")))?
                    .into();
                (None, None, h)
            }
        };
        if img.capacity > 0 {
            // The kernel may refuse sizes above fs.pipe-max-size without
            // CAP_SYS_RESOURCE; the data still has to fit.
            let _ = set_pipe_size(&anchor, img.capacity);
        }
        if !data.is_empty() {
            let wfd = w.as_ref().unwrap_or(&anchor);
            let mut done = 0;
            while done < data.len() {
                // SAFETY: writing our buffer into our own pipe.
                let n = unsafe {
                    libc::write(
                        wfd.as_raw_fd(),
                        data[done..].as_ptr().cast(),
                        data.len() - done,
                    )
                };
                if n <= 0 {
                    return Err(io_err(format!("refilling pipe {id}"))(
                        std::io::Error::last_os_error(),
                    ));
                }
                done += n as usize;
            }
        }
        self.made[idx] = Some(Made {
            read: r,
            write: w,
            anchor,
            ends_given: (false, false),
        });
        Ok(())
    }

    /// An open description of one end of pipe `id` with `flags`. A FIFO
    /// deleted while open (its link ends with " (deleted)") is made anew
    /// beside its old name and removed again; its descriptions are opened
    /// through /proc/self/fd.
    pub fn open_end(&mut self, id: u32, fifo: Option<&str>, flags: u32) -> Result<OwnedFd> {
        self.make(id, fifo)?;
        let m = self.made[id as usize].as_mut().expect("made above");
        let write = flags as i32 & libc::O_ACCMODE == libc::O_WRONLY;
        let fd = match (write, fifo) {
            (false, None) if !m.ends_given.0 => {
                m.ends_given.0 = true;
                m.read.take().expect("read end present")
            }
            (true, None) if !m.ends_given.1 => {
                m.ends_given.1 = true;
                m.write.take().expect("write end present")
            }
            _ => {
                // Another description of the same pipe, opened anew.
                let path = match fifo {
                    Some(p) if !p.ends_with(DELETED_FIFO) => p.to_string(),
                    _ => format!("/proc/self/fd/{}", m.anchor.as_raw_fd()),
                };
                let f = File::options()
                    .read(!write)
                    .write(write)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(&path)
                    .map_err(io_err(format!("opening an end of pipe {id} ({path})")))?;
                f.into()
            }
        };
        // Status flags as recorded (O_NONBLOCK, ...).
        let fl = flags as i32 & !(libc::O_ACCMODE | libc::O_CLOEXEC);
        // SAFETY: F_SETFL on an fd we own.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl) } < 0 {
            return Err(io_err(format!("setting flags of pipe {id}"))(
                std::io::Error::last_os_error(),
            ));
        }
        Ok(fd)
    }

    pub fn into_holders(mut self) -> Vec<OwnedFd> {
        for m in self.made.iter_mut().flatten() {
            if let Some(r) = m.read.take() {
                self.holders.push(r);
            }
            if let Some(w) = m.write.take() {
                self.holders.push(w);
            }
        }
        for m in self.made.into_iter().flatten() {
            self.holders.push(m.anchor);
        }
        self.holders
    }
}

const DELETED_FIFO: &str = " (deleted)";

/// A FIFO made at `path` (or beside it when the name is taken), opened
/// O_RDWR (never blocks, keeps it open for the refill) and unlinked again.
fn deleted_fifo(path: &str) -> Result<OwnedFd> {
    let mut name = path.to_string();
    for n in 1..=100 {
        let c = std::ffi::CString::new(name.as_str())
            .map_err(|_| Error::Other(format!("image: FIFO path with NUL byte: {path:?}")))?;
        // SAFETY: mkfifo of a NUL-terminated path.
        if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EEXIST) {
                name = format!("{path}.stasis-deleted-{n}");
                continue;
            }
            return Err(io_err(format!("recreating deleted FIFO {path}"))(e));
        }
        let fd = File::options().read(true).write(true).open(&name);
        // SAFETY: unlink of the FIFO we just made.
        unsafe { libc::unlink(c.as_ptr()) };
        let fd: OwnedFd = fd
            .map_err(io_err(format!("opening recreated deleted FIFO {name}")))?
            .into();
        return Ok(fd);
    }
    Err(Error::Other(format!(
        "recreating deleted FIFO {path}: every name beside it is taken"
    )))
}
