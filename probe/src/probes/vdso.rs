//! The special mappings, and moving the vDSO back with ARCH_MAP_VDSO_64.

use nix::errno::Errno;

use crate::feature::Feature::{self, *};
use crate::report::Outcome;
use crate::runner::Unit;
use crate::util::{hex, Fail, PResult};
use crate::vdso::Layout;

pub(crate) static UNIT: Unit = Unit {
    name: "vdso",
    features: &[VdsoLayout, ArchMapVdso],
    run,
    cleanup: None,
};

fn run() -> Vec<(Feature, Outcome)> {
    let layout = Layout::of(None);
    let layout_outcome = match &layout {
        Err(e) => Outcome::error(e.to_string()).with_call("read /proc/self/maps", None),
        Ok(l) => {
            let o = if l.known {
                Outcome::ok(format!("{}; contiguous, a known layout", l.describe()))
            } else if l.block().is_empty() {
                Outcome::missing("no [vdso] mapping (vdso=0?)")
            } else {
                Outcome::missing(format!(
                    "{}{}: a layout stasis does not know",
                    l.describe(),
                    if l.contiguous { "" } else { ", not contiguous" }
                ))
            };
            let maps: Vec<serde_json::Value> = l
                .mappings
                .iter()
                .map(|m| {
                    serde_json::json!({
                        "name": m.name,
                        "start": hex(m.start),
                        "end": hex(m.end),
                        "pages": m.pages(),
                    })
                })
                .collect();
            o.with("mappings", maps)
                .with("contiguous", l.contiguous)
                .with("known", l.known)
        }
    };
    let remap = match layout {
        Ok(l) => crate::util::outcome(arch_map_vdso(&l)),
        Err(e) => Outcome::error(e.to_string()).with_call("read /proc/self/maps", None),
    };
    vec![(VdsoLayout, layout_outcome), (ArchMapVdso, remap)]
}

/// In this (throwaway) process: ARCH_MAP_VDSO_64 is refused while the vDSO is
/// mapped, then unmap the whole block and map it back at the same address.
/// Nothing between the unmap and the remap may use the vDSO (no clock reads).
fn arch_map_vdso(before: &Layout) -> PResult<Outcome> {
    let (start, end) = before
        .block_range()
        .ok_or_else(|| Fail::missing("arch_prctl(ARCH_MAP_VDSO_64)", "no vDSO to move"))?;
    match sys::mm::arch_map_vdso_64(start) {
        Err(e) if e.errno == Errno::EEXIST => {}
        Err(e) => {
            let f = Fail::from(e);
            return Err(if matches!(e.errno, Errno::EINVAL | Errno::ENOSYS) {
                f.into_missing()
            } else {
                f
            });
        }
        Ok(()) => {
            return Err(Fail::error(
                "arch_prctl(ARCH_MAP_VDSO_64)",
                "accepted a second vDSO while one is mapped",
            ))
        }
    }
    // SAFETY: unmapping the vDSO block of this throwaway process; nothing
    // calls into the vDSO until it is mapped back below.
    if unsafe { libc::munmap(start as *mut libc::c_void, (end - start) as usize) } != 0 {
        return Err(Fail::call("munmap([vvar]..[vdso])", Errno::last()));
    }
    sys::mm::arch_map_vdso_64(start)?;
    let after = Layout::of(None).map_err(|e| Fail::error("read /proc/self/maps", e.to_string()))?;
    if after.block() != before.block() {
        return Err(Fail::error(
            "arch_prctl(ARCH_MAP_VDSO_64)",
            format!("the vDSO came back as {}", after.describe()),
        ));
    }
    Ok(Outcome::ok(format!(
        "EEXIST while mapped; after unmapping, the whole block came back at {}",
        hex(start)
    )))
}
