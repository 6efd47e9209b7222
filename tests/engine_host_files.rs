//! Host files an image depends on: a restore whose mapped executable is
//! missing or changed is refused before anything is created, naming the
//! file and how it differs; `--ignore-changed-files` goes on and says what it
//! skipped; the unchanged file restores as always.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::*;

/// A copy of the counter workload at a path of this test's own, started
/// from there, dumped; returns (image, the copy's path, its bytes).
fn dumped_from_copy(h: &Harness) -> (PathBuf, PathBuf, Vec<u8>) {
    let bin_dir = h.root.join("bin");
    fs::create_dir_all(&bin_dir).unwrap();
    let bin = bin_dir.join("counter");
    let bytes = fs::read(workload("counter")).expect("the counter workload");
    fs::write(&bin, &bytes).unwrap();
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    let mut argv = vec![bin.clone().into_os_string()];
    argv.push(h.dir.clone().into_os_string());
    let sb = h.start(&argv);
    let image = h.dump(&sb, &[]);
    (image, bin, bytes)
}

/// Restores `image`, expects a refusal naming `path` and every one of
/// `words`, and no sandbox left behind.
fn expect_refused(h: &Harness, image: &Path, path: &Path, words: &[&str]) {
    let name = h.new_name("changed");
    let before = h.ps_json();
    let out = h.restore_raw(image, &name);
    let err = text(&out.stderr);
    assert!(
        !out.status.success(),
        "restore with a changed host file succeeded: {}",
        describe(&out)
    );
    let p = path.to_string_lossy();
    assert!(
        err.contains(p.as_ref()),
        "the refusal does not name {p}: {err}"
    );
    for w in words {
        assert!(err.contains(w), "the refusal does not say {w:?}: {err}");
    }
    assert!(
        err.contains("--ignore-changed-files"),
        "the refusal does not say how to go on: {err}"
    );
    assert_eq!(before, h.ps_json(), "a refused restore left a sandbox");
}

#[test]
fn changed_executable_is_refused_then_restores_once_put_back() {
    let h = Harness::new("exe-changed");
    let (image, bin, bytes) = dumped_from_copy(&h);
    // The original inode is kept aside; each change is a new file renamed
    // over the path, as a package upgrade does.
    let saved = h.root.join("counter.orig");
    fs::hard_link(&bin, &saved).unwrap();
    let replace = |contents: &[u8]| {
        let tmp = h.root.join("counter.new");
        fs::write(&tmp, contents).unwrap();
        fs::rename(&tmp, &bin).unwrap();
    };

    // Another program at the same path.
    replace(&fs::read(workload("refuse")).unwrap());
    expect_refused(&h, &image, &bin, &["size", "executable of process"]);

    // Same size, one byte different in the middle of the code.
    let mut changed = bytes.clone();
    let at = changed.len() / 3;
    changed[at] ^= 0x40;
    replace(&changed);
    expect_refused(&h, &image, &bin, &["contents differ"]);

    // Gone.
    fs::remove_file(&bin).unwrap();
    expect_refused(&h, &image, &bin, &["missing"]);

    // A directory in its place.
    fs::create_dir(&bin).unwrap();
    expect_refused(&h, &image, &bin, &["is now a directory"]);
    fs::remove_dir(&bin).unwrap();

    // Put back: restores and passes its own checks (which compare the
    // mapped file's inode too).
    fs::rename(&saved, &bin).unwrap();
    let restored = h.restore(&image);
    h.expect_pass(&restored);
}

#[test]
fn ignore_changed_files_goes_on_and_says_what_it_skipped() {
    let h = Harness::new("exe-ignored");
    let (image, bin, bytes) = dumped_from_copy(&h);
    // Changed in place (same inode). The last byte of the file lies past every loaded segment (section
    // headers): the program runs the same, but the file differs.
    let mut changed = bytes.clone();
    let last = changed.len() - 1;
    changed[last] ^= 0x01;
    fs::write(&bin, &changed).unwrap();
    expect_refused(&h, &image, &bin, &["contents differ"]);

    let _ = fs::remove_file(h.path("verdict"));
    let name = h.new_name("ignored");
    let out = h
        .command()
        .arg("restore")
        .arg(&image)
        .args(["--name", &name, "-d", "--ignore-changed-files"])
        .output()
        .expect("running stasis restore");
    assert!(
        out.status.success(),
        "restore --ignore-changed-files failed: {}",
        describe(&out)
    );
    let err = text(&out.stderr);
    assert!(
        err.contains(bin.to_string_lossy().as_ref()) && err.contains("contents differ"),
        "the restore does not say which changed file it went on with: {err}"
    );
    h.expect_pass(&name);
}
