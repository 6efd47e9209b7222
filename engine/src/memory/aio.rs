//! Linux AIO contexts (io_setup): each is a ring mapped in the process
//! ("/[aio] (deleted)", shared), whose address is the context's id. The
//! ring's header holds the number of event slots (`nr`), `head` (the next
//! event to reap) and `tail` (where the kernel writes the next completion);
//! completed but unreaped events lie between them.
//!
//! Dump saves the ring's pages like any area's. Restore maps them as plain
//! anonymous memory at the ring's address, then, in the task: io_setup with
//! the request count that gives a ring of the same size; as many no-op
//! requests (1-byte writes to /dev/null) submitted and reaped as the old
//! tail, which brings the kernel's own tail (kept out of the task's reach)
//! to it; the old head and events copied into the new ring; and the new ring
//! moved over the old contents with mremap, which the kernel follows (the
//! context's id becomes the old address again).
//!
//! Requests still in flight at the dump cannot be seen from outside the
//! kernel: their completions are lost, as with CRIU.

use crate::error::{Error, Result};
use crate::image::{Vma, VmaKind, PAGE_SIZE};
use crate::remote::{put_cstr, Remote};

/// How the kernel names an AIO ring's mapping.
pub const RING_PATH: &str = "/[aio] (deleted)";
/// `struct aio_ring`'s header and `struct io_event`: 32 bytes each.
const HEADER: u64 = 32;
const EVENT: u64 = 32;
const RING_MAGIC: u32 = 0xa10a_10a1;
/// Largest ring restored (fs.aio-max-nr's default, 65536 requests, needs
/// about 4 MiB).
const MAX_RING: u64 = 64 << 20;
const IOCB_CMD_PWRITE: u16 = 1;
/// Requests submitted at once while the tail is moved: their iocbs, the
/// pointers to them and their events fit in the scratch space.
const BATCH: u64 = 64;

fn perr(pid: i32, reason: String) -> Error {
    Error::Process { pid, reason }
}

/// Event slots of a ring of `len` bytes, and the io_setup request count
/// that gives it: the kernel takes max(n, 4 * CPUs), doubles it, adds 2,
/// and rounds the ring up to whole pages, so (slots - 2) / 2 gives it back.
fn geometry(len: u64) -> Option<(u64, u32)> {
    if len < PAGE_SIZE || !len.is_multiple_of(PAGE_SIZE) || len > MAX_RING {
        return None;
    }
    let slots = (len - HEADER) / EVENT;
    let nr_req = u32::try_from(slots.checked_sub(2)? / 2).ok()?;
    Some((slots, nr_req))
}

/// The header's nr, head, tail and magic.
fn header(b: &[u8]) -> Option<(u32, u32, u32, u32)> {
    let w = |i: usize| {
        Some(u32::from_le_bytes(
            b.get(i * 4..i * 4 + 4)?.try_into().ok()?,
        ))
    };
    Some((w(1)?, w(2)?, w(3)?, w(4)?))
}

/// The kind of the ring area `start`-`end` of `pid`, its header checked.
pub fn collect(pid: i32, start: u64, end: u64) -> Result<VmaKind> {
    use std::os::unix::fs::FileExt;
    let unsupported = |detail: String| Error::Unsupported {
        pid,
        what: format!("a Linux AIO context (io_setup) at {start:#x}"),
        detail,
    };
    let (slots, nr_req) = geometry(end - start)
        .ok_or_else(|| unsupported(format!("ring of {} bytes", end - start)))?;
    let mem = std::fs::File::open(format!("/proc/{pid}/mem"))
        .map_err(|e| perr(pid, format!("opening its memory: {e}")))?;
    let mut b = [0u8; HEADER as usize];
    mem.read_exact_at(&mut b, start)
        .map_err(|e| perr(pid, format!("reading the AIO ring at {start:#x}: {e}")))?;
    match header(&b) {
        Some((nr, head, tail, RING_MAGIC)) if nr as u64 == slots && head < nr && tail < nr => {
            Ok(VmaKind::Aio { nr_req })
        }
        _ => Err(unsupported(
            "a ring whose header is not the kernel's".into(),
        )),
    }
}

/// Checks an AIO area of an image before anything is created.
pub fn validate(pid: i32, v: &Vma) -> Result<()> {
    let VmaKind::Aio { nr_req } = v.kind else {
        return Ok(());
    };
    match geometry(v.end - v.start) {
        Some((_, n)) if n == nr_req => Ok(()),
        _ => Err(Error::Other(format!(
            "image of process {pid}: AIO ring {:#x}-{:#x} of {nr_req} requests is not a ring the kernel makes",
            v.start, v.end
        ))),
    }
}

/// Rebuilds every AIO context of `vmas` in the task (their areas mapped
/// and filled with the saved rings); `scratch` is `len` bytes of the
/// trampoline's scratch space.
pub fn restore(r: &mut Remote, vmas: &[Vma], scratch: u64, len: u64) -> Result<()> {
    let rings: Vec<&Vma> = vmas
        .iter()
        .filter(|v| matches!(v.kind, VmaKind::Aio { .. }))
        .collect();
    if rings.is_empty() {
        return Ok(());
    }
    put_cstr(r, scratch, "/dev/null")?;
    let null = r.call(
        "open /dev/null for AIO rings",
        libc::SYS_openat,
        [
            libc::AT_FDCWD as u64,
            scratch,
            (libc::O_WRONLY | libc::O_CLOEXEC) as u64,
            0,
            0,
            0,
        ],
    )?;
    let res = rings
        .iter()
        .try_for_each(|v| restore_ring(r, v, null, scratch, len));
    let closed = r.call("close of /dev/null", libc::SYS_close, [null, 0, 0, 0, 0, 0]);
    res?;
    closed.map(|_| ())
}

fn restore_ring(r: &mut Remote, v: &Vma, null: u64, scratch: u64, len: u64) -> Result<()> {
    let pid = r.tid;
    let VmaKind::Aio { nr_req } = v.kind else {
        return Ok(());
    };
    let size = v.end - v.start;
    let what = format!("AIO ring {:#x}-{:#x}", v.start, v.end);
    let old = r.read_mem(v.start, size as usize)?;
    let (nr, head, tail, _) = header(&old)
        .filter(|&(nr, head, tail, _)| {
            geometry(size).is_some_and(|(slots, _)| slots == nr as u64) && head < nr && tail < nr
        })
        .ok_or_else(|| perr(pid, format!("{what}: the saved ring's header is not valid")))?;
    r.write_mem(scratch, &0u64.to_le_bytes())?;
    r.call(
        &format!("io_setup({nr_req}) for {what}"),
        libc::SYS_io_setup,
        [nr_req as u64, scratch, 0, 0, 0, 0],
    )?;
    let ctx_bytes = r.read_mem(scratch, 8)?;
    let ctx = u64::from_le_bytes(ctx_bytes[..8].try_into().unwrap_or_default());
    let moved = (|| -> Result<()> {
        let fresh = r.read_mem(ctx, HEADER as usize)?;
        let new_nr = header(&fresh).map(|h| h.0);
        if new_nr != Some(nr) {
            return Err(perr(
                pid,
                format!("{what}: io_setup({nr_req}) made a ring of {new_nr:?} events, not {nr}"),
            ));
        }
        advance_tail(r, ctx, tail as u64, null, scratch, len, &what)?;
        // The old head and every event slot; the new header keeps the rest.
        r.write_mem(ctx + 8, &head.to_le_bytes())?;
        r.write_mem(ctx + HEADER, &old[HEADER as usize..])?;
        let got = r.call(
            &format!("mremap of {what} into place"),
            libc::SYS_mremap,
            [
                ctx,
                size,
                size,
                (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64,
                v.start,
                0,
            ],
        )?;
        if got != v.start {
            return Err(perr(pid, format!("{what}: moved to {got:#x}")));
        }
        Ok(())
    })();
    if moved.is_err() {
        let _ = r.syscall_raw(libc::SYS_io_destroy, [ctx, 0, 0, 0, 0, 0]);
    }
    moved
}

/// Submits and reaps `n` no-op requests on `ctx`, so that the kernel's
/// tail (and the ring's head and tail) stand at `n`.
fn advance_tail(
    r: &mut Remote,
    ctx: u64,
    n: u64,
    null: u64,
    scratch: u64,
    len: u64,
    what: &str,
) -> Result<()> {
    const IOCB: u64 = 64;
    let batch = BATCH.min(len.saturating_sub(64) / (IOCB + 8 + EVENT));
    if n > 0 && batch == 0 {
        return Err(perr(r.tid, format!("{what}: no scratch space")));
    }
    // scratch: a byte to write, the iocbs, their pointers, the events.
    let buf = scratch;
    let iocbs = scratch + 64;
    let ptrs = iocbs + batch * IOCB;
    let events = ptrs + batch * 8;
    let mut done = 0;
    while done < n {
        let k = batch.min(n - done);
        let mut table = Vec::with_capacity((k * IOCB) as usize);
        for _ in 0..k {
            let mut cb = [0u8; IOCB as usize];
            cb[16..18].copy_from_slice(&IOCB_CMD_PWRITE.to_le_bytes());
            cb[20..24].copy_from_slice(&(null as u32).to_le_bytes());
            cb[24..32].copy_from_slice(&buf.to_le_bytes());
            cb[32..40].copy_from_slice(&1u64.to_le_bytes());
            table.extend_from_slice(&cb);
        }
        r.write_mem(iocbs, &table)?;
        let pointers: Vec<u8> = (0..k)
            .flat_map(|i| (iocbs + i * IOCB).to_le_bytes())
            .collect();
        r.write_mem(ptrs, &pointers)?;
        let sent = r.call(
            &format!("io_submit of {k} no-op requests for {what}"),
            libc::SYS_io_submit,
            [ctx, k, ptrs, 0, 0, 0],
        )?;
        let got = r.call(
            &format!("io_getevents of {k} no-op requests for {what}"),
            libc::SYS_io_getevents,
            [ctx, sent, sent, events, 0, 0],
        )?;
        if sent != k || got != k {
            return Err(perr(
                r.tid,
                format!("{what}: {sent} of {k} no-op requests submitted, {got} reaped"),
            ));
        }
        done += k;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_geometry() {
        // io_setup(126): 126 * 2 + 2 = 254 events of 32 bytes after the
        // header fill two pages, which hold 255.
        let (slots, nr_req) = geometry(2 * PAGE_SIZE).unwrap();
        assert_eq!(slots, 255);
        assert_eq!(nr_req, 126);
        assert!(geometry(100).is_none());
        assert!(geometry(MAX_RING + PAGE_SIZE).is_none());
    }
}
