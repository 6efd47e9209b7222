//! Capabilities of the calling process (caps crate).

use caps::{CapSet, Capability as Cap};

use crate::feature::Feature::{self, *};
use crate::report::Outcome;
use crate::runner::Unit;

pub(crate) static UNIT: Unit = Unit {
    name: "capabilities",
    features: &[
        CapSysAdmin,
        CapCheckpointRestore,
        CapSysPtrace,
        CapNetAdmin,
        CapSysResource,
        CapSetuid,
        CapSetgid,
    ],
    run,
    cleanup: None,
};

fn run() -> Vec<(Feature, Outcome)> {
    let table = [
        (CapSysAdmin, Cap::CAP_SYS_ADMIN),
        (CapCheckpointRestore, Cap::CAP_CHECKPOINT_RESTORE),
        (CapSysPtrace, Cap::CAP_SYS_PTRACE),
        (CapNetAdmin, Cap::CAP_NET_ADMIN),
        (CapSysResource, Cap::CAP_SYS_RESOURCE),
        (CapSetuid, Cap::CAP_SETUID),
        (CapSetgid, Cap::CAP_SETGID),
    ];
    let eff = caps::read(None, CapSet::Effective);
    let bnd = caps::read(None, CapSet::Bounding);
    table
        .iter()
        .map(|&(f, cap)| {
            let o = match (&eff, &bnd) {
                (Ok(e), _) if e.contains(&cap) => Outcome::ok(format!("{cap} is effective")),
                (Ok(_), Ok(b)) if !b.contains(&cap) => Outcome::missing(format!(
                    "{cap} is not in the bounding set: nothing in this process tree can gain it"
                ))
                .with_call("capget", None),
                (Ok(_), _) => {
                    Outcome::missing(format!("{cap} is not effective")).with_call("capget", None)
                }
                (Err(e), _) => Outcome::error(e.to_string()).with_call("capget", None),
            };
            (f, o)
        })
        .collect()
}
