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

/// SysV IPC of the sandbox's namespace: segments (attached by parent and
/// child, one marked for removal, one attached by nobody), a semaphore set
/// and a message queue come back with their ids, keys, modes, owners,
/// contents, values and messages in order; the attached segments at the same
/// addresses and still shared (ping-pong between parent and child).
#[test]
fn sysv_ipc() {
    let h = Harness::new("sysvipc");
    let sb = h.start_c("sysvipc", &[]);
    let image = h.dump(&sb, &[]);
    let ipc: serde_json::Value = serde_json::from_slice(
        &std::fs::read(image.join("ipc.json")).expect("ipc.json in the image"),
    )
    .expect("ipc.json is JSON");
    assert_eq!(ipc["shm"].as_array().map(|a| a.len()), Some(3), "{ipc}");
    assert_eq!(ipc["sem"].as_array().map(|a| a.len()), Some(1), "{ipc}");
    assert_eq!(
        ipc["msg"][0]["messages"].as_array().map(|a| a.len()),
        Some(3),
        "{ipc}"
    );
    let restored = h.restore(&image);
    h.expect_pass(&restored);
}
