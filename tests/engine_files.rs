//! Pipes and files across a dump and restore.

mod common;

use common::*;

/// A pipe between two processes holding 40123 unread bytes: the child reads
/// them all after restore; the parent's end is still the writer.
#[test]
fn pipe_with_unread_data() {
    let h = Harness::new("pipe");
    let sb = h.start_c("pipe", &[]);
    let (_image, restored) = h.dump_and_restore(&sb);
    h.expect_pass(&restored);
}

/// A file read to the middle, an O_APPEND log, a deleted open file,
/// /dev/null, /dev/zero and a directory, at their fd numbers with their flags.
/// After the restored workload appended to its log, the log holds exactly
/// what was written before the dump, the line written through another fd
/// after restore, then the appended line.
#[test]
fn files_offsets_append_deleted_devices() {
    let h = Harness::new("files");
    let sb = h.start_c("files", &[]);
    let (_image, restored) = h.dump_and_restore(&sb);
    h.expect_pass(&restored);
    let log = std::fs::read_to_string(h.path("app.log")).expect("DIR/app.log");
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 12, "app.log: {log:?}");
    assert_eq!(lines[9], "line 10 before the dump");
    assert_eq!(lines[10], "grown through another fd");
    assert_eq!(lines[11], "appended after the dump");
    assert!(
        !h.path("deleted.dat").exists(),
        "the deleted file came back under its name"
    );
}

/// A process holding 3000 fds in a dense table (files at offsets of their
/// own, 500 pipes and 500 socketpairs with data waiting, /dev/null, and
/// duplicates sharing offsets) and 120 file mappings whose fds it closed:
/// every fd comes back at its number as the same kind of file, same
/// description and same offset, and every mapping with its bytes (the
/// workload checks). The restore opens each mapped file in the task for its
/// mmap, at the lowest free numbers, right above the table: those fds must
/// not be mistaken for the restore's own (59 fds or more once failed so).
#[test]
fn thousands_of_fds_with_file_mappings() {
    let h = Harness::new("manyfds");
    let sb = h.start_c("manyfds", &["3000"]);
    let (image, restored) = h.dump_and_restore(&sb);
    let v = h.expect_pass(&restored);
    assert_eq!(verdict_field(&v, "fds"), Some("3000"), "{v}");
    let p: serde_json::Value =
        serde_json::from_slice(&std::fs::read(image.join("proc-2.json")).expect("proc-2.json"))
            .expect("JSON");
    let fds = p["fds"].as_array().expect("fds").len();
    assert!(fds >= 3000 + 20, "{fds} fds in the image");
}

/// A process whose fds sit right below the open-file limit (600 fds ending
/// 100 below the hard limit the sandbox's workloads get): the restore keeps
/// the descriptions it hands the tree in the holes of the fd tables, not
/// above the highest fd, where they would not fit.
#[test]
fn fds_near_the_open_file_limit() {
    let h = Harness::new("highfds");
    let limit = nofile_limit();
    let base = limit.saturating_sub(700).max(3);
    let sb = h.start_c("manyfds", &["600", &base.to_string()]);
    let (_image, restored) = h.dump_and_restore(&sb);
    let v = h.expect_pass(&restored);
    assert_eq!(verdict_field(&v, "fds"), Some("600"), "{v}");
}

/// This process's hard RLIMIT_NOFILE (what the sandbox's workloads get).
fn nofile_limit() -> u64 {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit into a local struct.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) }, 0);
    l.rlim_max.min(1 << 20)
}

/// An fd number near i32::MAX (or one used twice) in an image is refused by
/// the checks before anything is made, with an error naming the process and
/// the fd, and so is one the restore could not hold open below the open-file
/// limit; the sandbox name stays free.
#[test]
fn image_with_out_of_range_fd_is_refused() {
    let h = Harness::new("fdrange");
    let sb = h.start_c("files", &[]);
    let image = h.dump(&sb, &[]);
    for (bad, want) in [
        (
            i32::MAX as i64 - 1,
            format!("fd {} is out of range", i32::MAX - 1),
        ),
        (10, "fd 10 appears twice".to_string()),
        // In range, but above what the restore may hold (the open-file
        // limit is at most fs.nr_open, 2^20 unless the host raised it).
        ((1 << 20) - 1, "more than the open-file limit".to_string()),
    ] {
        let copy = h.image_path();
        copy_image(&image, &copy);
        edit_image_json(&copy, "proc-2.json", |p| {
            let fds = p["fds"].as_array_mut().expect("fds");
            let last = fds.len() - 1;
            fds[last]["fd"] = serde_json::json!(bad);
        });
        let name = h.new_name("bad");
        let out = h.restore_raw(&copy, &name);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "restore of a bad fd table succeeded");
        assert!(
            err.contains(&want) && (err.contains("process 2") || err.contains("the image's fds")),
            "the error says what is wrong: {err}"
        );
        assert!(!h.ps_lists(&name), "{name} was left behind");
    }
}
