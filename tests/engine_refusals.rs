//! What dump and restore must refuse, and how: a dump of something not
//! supported stops before writing an image, names the process, fd and kind,
//! and leaves the workload running untouched; a damaged or foreign image is
//! refused before any sandbox is created.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::*;

/// Dumps a `refuse KIND` workload, expects a refusal whose message contains
/// every one of `words`, then checks the workload goes on and passes.
fn refused_dump(kind: &str, words: &[&str]) {
    let h = Harness::new(&format!("refuse-{kind}"));
    let sb = h.start_c("refuse", &[kind]);
    let image = h.image_path();
    let out = h.dump_raw(&sb, &image, &[]);
    let err = text(&out.stderr);
    assert!(
        !out.status.success(),
        "dump of a workload with {kind} succeeded: {}",
        describe(&out)
    );
    for w in words {
        assert!(
            err.contains(w),
            "the refusal does not mention {w:?}: {}",
            describe(&out)
        );
    }
    assert!(
        !image.join("manifest.json").exists(),
        "a refused dump left an image in {}",
        image.display()
    );
    if let Ok(mut entries) = fs::read_dir(&image) {
        assert!(
            entries.next().is_none(),
            "a refused dump left files in {}",
            image.display()
        );
    }
    assert!(h.ps_lists(&sb), "sandbox {sb} is gone after a refused dump");
    // Untouched: it goes on counting, and its own checks pass.
    let now = read_number(&h.path("count")).unwrap_or(0);
    h.wait_count_above(&sb, now);
    h.expect_pass(&sb);
}

#[test]
fn refuses_socket() {
    refused_dump("socket", &["process 2", "socket", "fd 7", "SCM_RIGHTS"]);
}

#[test]
fn refuses_io_uring() {
    refused_dump("io_uring", &["process 2", "anon_inode", "io_uring", "fd 9"]);
}

/// A dump into a directory that holds a file is refused, leaves the file
/// alone, and leaves the workload running.
#[test]
fn refuses_dump_into_non_empty_dir() {
    let h = Harness::new("nonempty");
    let sb = h.start_c("counter", &[]);
    let image = h.image_path();
    fs::create_dir(&image).unwrap();
    fs::write(image.join("precious"), "keep me").unwrap();
    let out = h.dump_raw(&sb, &image, &[]);
    assert!(
        !out.status.success(),
        "dump into a non-empty directory succeeded: {}",
        describe(&out)
    );
    assert_eq!(
        fs::read_to_string(image.join("precious")).unwrap(),
        "keep me"
    );
    assert_eq!(
        fs::read_dir(&image).unwrap().count(),
        1,
        "the dump wrote into {}",
        image.display()
    );
    let now = read_number(&h.path("count")).unwrap_or(0);
    h.wait_count_above(&sb, now);
    h.expect_pass(&sb);
}

/// A counter image, dumped for a refusal test; the workload is gone after it.
fn counter_image(h: &Harness) -> PathBuf {
    let sb = h.start_c("counter", &[]);
    h.dump(&sb, &[])
}

/// A copy of `image` changed by `damage`, restored: must fail with a message
/// containing every one of `words`, and leave no sandbox behind.
fn refused_restore(tag: &str, damage: impl FnOnce(&Path), words: &[&str]) {
    let h = Harness::new(tag);
    let image = counter_image(&h);
    let copy = h.image_path();
    copy_image(&image, &copy);
    damage(&copy);
    let name = h.new_name("damaged");
    let before = h.ps_json();
    let out = h.restore_raw(&copy, &name);
    let err = text(&out.stderr);
    assert!(
        !out.status.success(),
        "restore of a damaged image ({tag}) succeeded: {}",
        describe(&out)
    );
    for w in words {
        assert!(
            err.contains(w),
            "the refusal does not mention {w:?}: {}",
            describe(&out)
        );
    }
    let after = h.ps_json();
    assert!(
        !json_has_string(&after, &name),
        "a refused restore left sandbox {name}: {after}"
    );
    assert_eq!(
        before, after,
        "stasis ps --json before and after a refused restore"
    );
    // The intact image still restores: the refusal was about the damage.
    let restored = h.restore(&image);
    h.expect_pass(&restored);
}

/// The largest page file: the workload's memory.
fn page_file(image: &Path) -> PathBuf {
    image_files(image, "pages-")
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no pages-*.img in {}", image.display()))
}

#[test]
fn refuses_corrupted_page_file() {
    refused_restore(
        "corrupt",
        |img| {
            let p = page_file(img);
            let len = fs::metadata(&p).unwrap().len();
            assert!(len > 0, "{} is empty", p.display());
            flip_byte(&p, len / 2 + 7);
        },
        &["checksum"],
    );
}

#[test]
fn refuses_corrupted_metadata() {
    refused_restore(
        "corrupt-meta",
        |img| {
            let p = img.join("inventory.json");
            let s = fs::read_to_string(&p).expect("inventory.json");
            // Change a digit: still valid JSON, but not what was written.
            let at = s
                .find(|c: char| c.is_ascii_digit())
                .expect("a digit in inventory.json");
            let mut b = s.into_bytes();
            b[at] = if b[at] == b'9' { b'8' } else { b[at] + 1 };
            fs::write(&p, b).unwrap();
        },
        &["checksum", "inventory.json"],
    );
}

#[test]
fn refuses_truncated_page_file() {
    let mut name = String::new();
    refused_restore(
        "truncated",
        |img| {
            let p = page_file(img);
            name = p.file_name().unwrap().to_string_lossy().into_owned();
            let len = fs::metadata(&p).unwrap().len();
            let f = fs::OpenOptions::new().write(true).open(&p).unwrap();
            f.set_len(len.saturating_sub(4096)).unwrap();
        },
        &["pages-"],
    );
    assert!(name.starts_with("pages-"));
}

#[test]
fn refuses_image_readable_by_others() {
    refused_restore(
        "mode0755",
        |img| fs::set_permissions(img, fs::Permissions::from_mode(0o755)).unwrap(),
        &["755"],
    );
}

fn edit_manifest(img: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let p = img.join("manifest.json");
    let mut m: serde_json::Value =
        serde_json::from_slice(&fs::read(&p).expect("manifest.json")).unwrap();
    edit(&mut m);
    fs::write(&p, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

#[test]
fn refuses_other_format_version() {
    refused_restore(
        "version",
        |img| {
            edit_manifest(img, |m| {
                let v = m["format_version"]
                    .as_u64()
                    .expect("format_version in the manifest");
                m["format_version"] = (v + 100).into();
            })
        },
        &["version"],
    );
}

#[test]
fn refuses_other_cpu_xstate() {
    refused_restore(
        "xstate",
        |img| {
            edit_manifest(img, |m| {
                let x = m["cpu"]["xcr0"].as_u64().expect("cpu.xcr0 in the manifest");
                // Bit 62 is reserved: no CPU has that state component.
                m["cpu"]["xcr0"] = (x | 1 << 62).into();
            })
        },
        &["xstate"],
    );
}

/// An image made on a CPU with an instruction-set feature this one lacks
/// (simulated by adding one to the manifest's record of the dump's CPU) is
/// refused naming the feature; the features this CPU has are recorded.
#[test]
fn refuses_cpu_without_a_dumped_feature() {
    let mut recorded = Vec::new();
    refused_restore(
        "cpu-flag",
        |img| {
            edit_manifest(img, |m| {
                let flags = m["cpu"]["flags"]
                    .as_array_mut()
                    .expect("cpu.flags in the manifest");
                recorded = flags
                    .iter()
                    .filter_map(|f| f.as_str().map(String::from))
                    .collect();
                flags.push("avx1024_imaginary".into());
            })
        },
        &["avx1024_imaginary", "lacks"],
    );
    assert!(
        recorded.iter().any(|f| f == "sse2"),
        "the dump did not record this CPU's features: {recorded:?}"
    );
}
