//! Process state beyond files: memory shared between processes, SysV IPC,
//! timers and clocks, seccomp filters, each across a dump and restore and
//! checked from inside the restored workload.

mod common;

use common::*;

/// A parent and its child share anonymous memory (MAP_SHARED|MAP_ANONYMOUS,
/// /dev/zero, an mremap alias), a file mapping and a POSIX shared memory
/// object; after restore each sees the other's writes and they play
/// ping-pong through every object, so each is still one object. Never
/// touched pages of shared memory stay out of memory, and shared anonymous
/// memory is saved once, not once per process.
#[test]
fn memory_shared_between_processes() {
    let h = Harness::new("shmem");
    let sb = h.start_c("shmem", &[]);
    let image = h.dump(&sb, &[]);
    let shmem: serde_json::Value = serde_json::from_slice(
        &std::fs::read(image.join("shmem.json")).expect("shmem.json in the image"),
    )
    .expect("shmem.json is JSON");
    let objects = shmem["objects"].as_array().expect("objects");
    // anon (with its alias), /dev/zero, and the child's own.
    assert_eq!(objects.len(), 3, "{shmem}");
    let restored = h.restore(&image);
    h.expect_pass(&restored);
}
