//! Memory of every kind across a dump and restore.

mod common;

use std::time::Instant;

use common::*;

/// Private and shared anonymous memory, private (copy-on-write) and shared
/// file mappings, heap, stack, PROT_NONE, MAP_GROWSDOWN and never-touched
/// memory, each checked from inside the restored workload (patterns, memory
/// map, program break, pages that must still not exist).
#[test]
fn memory_of_every_kind() {
    let h = Harness::new("memory");
    let sb = h.start_c("memory", &[]);
    let (_image, restored) = h.dump_and_restore(&sb);
    h.expect_pass(&restored);
}

/// A 1 GiB anonymous area, every word of every page checked after restore.
/// The image is restored right away under the dumped sandbox's own name (what
/// `stasis restore IMAGE` does without `--name`), while the kernel may still
/// be freeing the killed workload's gigabyte: the restore waits for that.
#[test]
fn one_gib_anonymous_area() {
    let h = Harness::new("gib");
    let sb = h.start_c("bigmem", &[]);
    let t = Instant::now();
    let image = h.dump(&sb, &[]);
    let dumped = t.elapsed();
    let t = Instant::now();
    let _ = std::fs::remove_file(h.path("verdict"));
    let out = h
        .command()
        .arg("restore")
        .arg(&image)
        .arg("-d")
        .output()
        .expect("running stasis restore");
    assert!(
        out.status.success(),
        "stasis restore under the dumped name: {}",
        describe(&out)
    );
    assert_eq!(
        text(&out.stdout).trim(),
        sb,
        "restored under the dumped sandbox's name"
    );
    let restored = sb;
    let restored_in = t.elapsed();
    let v = h.expect_pass(&restored);
    assert_eq!(verdict_field(&v, "pages"), Some("262144"), "{v}");
    eprintln!("1 GiB: dump {dumped:?}, restore {restored_in:?}");
}

/// Flags of areas and of the address space: madvise advice, MAP_NORESERVE,
/// MAP_DROPPABLE, mlock'ed areas (also locked on fault, also shared),
/// mlockall(MCL_FUTURE | MCL_ONFAULT) and PR_SET_THP_DISABLE, each compared
/// from inside with what smaps and prctl showed before the dump.
#[test]
fn area_flags_and_locks() {
    let h = Harness::new("memflags");
    let sb = h.start_c("memflags", &[]);
    let (_image, restored) = h.dump_and_restore(&sb);
    h.expect_pass(&restored);
}

/// A memfd holding a script is executed (execveat with AT_EMPTY_PATH) after
/// restore as before, while mapped privately through a read-only
/// description and shared through its own; a memfd with a writer still
/// cannot be (ETXTBSY).
#[test]
fn memfd_executed_after_restore() {
    let h = Harness::new("memfdexec");
    let sb = h.start_c("memfdexec", &[]);
    let (_image, restored) = h.dump_and_restore(&sb);
    h.expect_pass(&restored);
}

/// membarrier registrations (global, private, sync-core and rseq
/// expedited) are in force after restore, as the process's own
/// MEMBARRIER_CMD_GET_REGISTRATIONS and expedited barriers show.
#[test]
fn membarrier_registrations() {
    let h = Harness::new("membarrier");
    let sb = h.start_c("membarrier", &[]);
    let (_image, restored) = h.dump_and_restore(&sb);
    h.expect_pass(&restored);
}

/// A Linux AIO context with completed, unreaped events: after restore the
/// ring is at its address (the context id), the events are reaped with
/// their tags and results, and a new request completes into the next slot.
#[test]
fn aio_context_with_unreaped_events() {
    let h = Harness::new("aio");
    let sb = h.start_c("aio", &[]);
    let (_image, restored) = h.dump_and_restore(&sb);
    h.expect_pass(&restored);
}
