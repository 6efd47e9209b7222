//! Property tests of the image reader: a real image (a dumped counter) is
//! mutated at random (truncated files, flipped bits, numbers in the
//! metadata set to extremes with the checksums made right again so that the
//! decoders and validators see them, arrays grown, whole files replaced by
//! random JSON, manifest sizes and bytes changed, files removed) and read
//! with `engine::restore::load` (everything restore checks before it makes
//! anything) and `engine::inspect::inspect`. Each must return, never panic,
//! and never make one allocation above 64 MiB (the image is well under
//! 1 MiB of metadata): the global allocator of this test aborts on one.
//! A damaged checksummed file must always be refused: by `load`, or, for a
//! page file the memory restore reads whole and verifies as it goes, by that
//! verification.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::Value;

use common::*;

/// Largest single allocation allowed while images are read.
const ALLOC_CAP: usize = 64 << 20;

struct Capped;

// SAFETY: forwards to the system allocator; only refuses (by aborting)
// requests above the cap.
unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check(new_size);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn check(size: usize) {
    if size > ALLOC_CAP {
        let msg = b"image_proptest: an allocation above 64 MiB while reading an image\n";
        // SAFETY: write(2) of a static buffer to stderr, then abort: nothing
        // here allocates.
        unsafe {
            libc::write(2, msg.as_ptr().cast(), msg.len());
            libc::abort();
        }
    }
}

#[global_allocator]
static ALLOC: Capped = Capped;

#[derive(Debug, Clone)]
enum Num {
    U(u64),
    I(i64),
}

#[derive(Debug, Clone)]
enum Mutation {
    /// Cut file `file` (index into the image's files) to a fraction of its size.
    Truncate { file: usize, keep: f64 },
    /// Flip one bit of a file.
    Flip { file: usize, at: f64, bit: u8 },
    /// Set the `which`-th number of a metadata file, checksum made right.
    SetNumber {
        file: usize,
        which: usize,
        value: Num,
    },
    /// Repeat an element of the `which`-th array `times` times, checksum made right.
    Grow {
        file: usize,
        which: usize,
        times: usize,
    },
    /// Replace a metadata file by random JSON, checksum made right.
    Replace { file: usize, value: Value },
    /// Set a file's size in the manifest.
    ManifestSize { file: usize, size: u64 },
    /// Set the `which`-th number of the manifest.
    ManifestNumber { which: usize, value: Num },
    /// Replace the manifest by random bytes.
    ManifestBytes(Vec<u8>),
    /// Remove a file.
    Remove { file: usize },
}

fn num() -> impl Strategy<Value = Num> {
    prop_oneof![
        Just(Num::U(0)),
        Just(Num::U(1)),
        Just(Num::U(4096)),
        Just(Num::U(u32::MAX as u64)),
        Just(Num::U(1 << 32)),
        Just(Num::U(1 << 40)),
        Just(Num::U(i64::MAX as u64)),
        Just(Num::U(u64::MAX)),
        Just(Num::I(-1)),
        Just(Num::I(i64::MIN)),
        any::<u64>().prop_map(Num::U),
        (0u64..100_000).prop_map(Num::U),
    ]
}

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        "[a-z0-9_/.-]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,10}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let f = 0usize..64;
    prop_oneof![
        1 => (f.clone(), 0.0f64..1.0).prop_map(|(file, keep)| Mutation::Truncate { file, keep }),
        1 => (f.clone(), 0.0f64..1.0, 0u8..8).prop_map(|(file, at, bit)| Mutation::Flip {
            file,
            at,
            bit
        }),
        4 => (f.clone(), any::<usize>(), num()).prop_map(|(file, which, value)| {
            Mutation::SetNumber { file, which, value }
        }),
        1 => (f.clone(), any::<usize>(), 1usize..2000).prop_map(|(file, which, times)| {
            Mutation::Grow { file, which, times }
        }),
        1 => (f.clone(), json()).prop_map(|(file, value)| Mutation::Replace { file, value }),
        1 => (f.clone(), prop_oneof![Just(0u64), Just(u64::MAX), Just(1 << 40), any::<u64>()])
            .prop_map(|(file, size)| Mutation::ManifestSize { file, size }),
        1 => (any::<usize>(), num())
            .prop_map(|(which, value)| Mutation::ManifestNumber { which, value }),
        1 => prop::collection::vec(any::<u8>(), 0..256).prop_map(Mutation::ManifestBytes),
        1 => f.prop_map(|file| Mutation::Remove { file }),
    ]
}

fn is_number(v: &Value) -> bool {
    v.is_number()
}

fn is_array(v: &Value) -> bool {
    v.is_array()
}

/// How many values of `v` (itself included) `want` picks.
fn count(v: &Value, want: fn(&Value) -> bool) -> usize {
    let inner = match v {
        Value::Array(a) => a.iter().map(|x| count(x, want)).sum(),
        Value::Object(o) => o.values().map(|x| count(x, want)).sum(),
        _ => 0,
    };
    inner + want(v) as usize
}

/// Applies `f` to the `k`-th value (in visiting order) that `want` picks.
fn visit(
    v: &mut Value,
    want: fn(&Value) -> bool,
    k: &mut usize,
    f: &mut dyn FnMut(&mut Value),
) -> bool {
    if want(v) {
        if *k == 0 {
            f(v);
            return true;
        }
        *k -= 1;
    }
    match v {
        Value::Array(a) => a.iter_mut().any(|x| visit(x, want, k, f)),
        Value::Object(o) => o.values_mut().any(|x| visit(x, want, k, f)),
        _ => false,
    }
}

/// Applies `f` to the `which`-th (modulo their number) value `want` picks.
fn change(v: &mut Value, want: fn(&Value) -> bool, which: usize, f: &mut dyn FnMut(&mut Value)) {
    let n = count(v, want);
    if n > 0 {
        visit(v, want, &mut (which % n), f);
    }
}

fn set(v: &mut Value, n: &Num) {
    *v = match *n {
        Num::U(u) => Value::from(u),
        Num::I(i) => Value::from(i),
    };
}

/// The image's files, manifest excluded, sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "manifest.json")
        .collect();
    v.sort();
    v
}

fn manifest(dir: &Path) -> Option<Value> {
    serde_json::from_slice(&fs::read(dir.join("manifest.json")).ok()?).ok()
}

fn write_manifest(dir: &Path, m: &Value) {
    fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec_pretty(m).unwrap(),
    )
    .unwrap();
}

/// Writes `bytes` as image file `name` and records its size and checksum
/// in the manifest; false (and nothing written) when the manifest cannot be
/// read or does not list the file.
fn rewrite(dir: &Path, name: &str, bytes: &[u8]) -> bool {
    let Some(mut m) = manifest(dir) else {
        return false;
    };
    let Some(e) = m.get_mut("files").and_then(|f| f.get_mut(name)) else {
        return false;
    };
    if !e.is_object() {
        return false;
    }
    e["size"] = Value::from(bytes.len() as u64);
    e["xxh3"] = Value::from(format!("{:016x}", twox_hash::XxHash3_64::oneshot(bytes)));
    fs::write(dir.join(name), bytes).unwrap();
    write_manifest(dir, &m);
    true
}

/// Applies a mutation, recording in `damaged` which files it changed behind
/// the manifest's back (true) or wrote again with their checksum (false).
fn apply(dir: &Path, m: &Mutation, damaged: &mut BTreeMap<String, bool>) {
    let names = files(dir);
    if names.is_empty() {
        return;
    }
    let pick = |i: usize| names[i % names.len()].clone();
    let jsons: Vec<String> = names
        .iter()
        .filter(|n| n.ends_with(".json"))
        .cloned()
        .collect();
    let pick_json = |i: usize| jsons.get(i % jsons.len().max(1)).cloned();
    let json_of =
        |name: &str| serde_json::from_slice::<Value>(&fs::read(dir.join(name)).ok()?).ok();
    match m {
        Mutation::Truncate { file, keep } => {
            let name = pick(*file);
            let p = dir.join(&name);
            let len = fs::metadata(&p).unwrap().len();
            let to = (len as f64 * keep) as u64;
            fs::OpenOptions::new()
                .write(true)
                .open(&p)
                .unwrap()
                .set_len(to)
                .unwrap();
            if to < len {
                damaged.insert(name, true);
            }
        }
        Mutation::Flip { file, at, bit } => {
            let name = pick(*file);
            let p = dir.join(&name);
            let mut b = fs::read(&p).unwrap();
            if b.is_empty() {
                return;
            }
            let i = ((b.len() as f64 * at) as usize).min(b.len() - 1);
            b[i] ^= 1 << bit;
            fs::write(&p, &b).unwrap();
            damaged.insert(name, true);
        }
        Mutation::SetNumber { file, which, value } => {
            let Some(name) = pick_json(*file) else { return };
            let Some(mut v) = json_of(&name) else { return };
            change(&mut v, is_number, *which, &mut |x| set(x, value));
            if rewrite(dir, &name, &serde_json::to_vec(&v).unwrap()) {
                damaged.insert(name, false);
            }
        }
        Mutation::Grow { file, which, times } => {
            let Some(name) = pick_json(*file) else { return };
            let Some(mut v) = json_of(&name) else { return };
            change(&mut v, is_array, *which, &mut |x| {
                if let Value::Array(a) = x {
                    if let Some(first) = a.first().cloned() {
                        a.extend(std::iter::repeat_n(first, *times));
                    }
                }
            });
            if rewrite(dir, &name, &serde_json::to_vec(&v).unwrap()) {
                damaged.insert(name, false);
            }
        }
        Mutation::Replace { file, value } => {
            if let Some(name) = pick_json(*file) {
                if rewrite(dir, &name, &serde_json::to_vec(value).unwrap()) {
                    damaged.insert(name, false);
                }
            }
        }
        Mutation::ManifestSize { file, size } => {
            let name = pick(*file);
            if let Some(mut m) = manifest(dir) {
                if let Some(e) = m
                    .get_mut("files")
                    .and_then(|f| f.get_mut(&name))
                    .filter(|e| e.is_object())
                {
                    if e["size"].as_u64() != Some(*size) {
                        e["size"] = Value::from(*size);
                        write_manifest(dir, &m);
                        damaged.insert(name, true);
                    }
                }
            }
        }
        Mutation::ManifestNumber { which, value } => {
            if let Some(mut m) = manifest(dir) {
                change(&mut m, is_number, *which, &mut |x| set(x, value));
                write_manifest(dir, &m);
            }
        }
        Mutation::ManifestBytes(b) => {
            fs::write(dir.join("manifest.json"), b).unwrap();
            damaged.insert("manifest.json".into(), true);
        }
        Mutation::Remove { file } => {
            fs::remove_file(dir.join(pick(*file))).unwrap();
            // Written again later, it would have the default mode: refused too.
            damaged.insert(format!("removed {}", pick(*file)), true);
        }
    }
}

/// Copies the image to a fresh directory (files 0600 as written, since
/// `fs::write` on an existing file keeps its mode).
fn fresh_copy(image: &Path, root: &Path, n: usize) -> PathBuf {
    let to = root.join(format!("case-{n}"));
    let _ = fs::remove_dir_all(&to);
    copy_image(image, &to);
    to
}

/// Applies `cases` random lists of mutations to copies of `image`; each must
/// load or be refused cleanly, and a damaged one must be refused by `load`
/// or, for the page files `load` leaves to the memory restore, by their
/// verification (`verify_streamed`, the same reading as the restore's), and
/// by `inspect`.
fn run_cases(h: &Harness, image: &Path, tag: &str, cases: u32) {
    let work = h.root.join(format!("cases-{tag}"));
    fs::create_dir_all(&work).unwrap();
    let mut runner = TestRunner::new(Config {
        // A few seconds by default; STASIS_PROPTEST_CASES runs more.
        cases: std::env::var("STASIS_PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(cases),
        failure_persistence: None,
        ..Config::default()
    });
    let n = std::cell::Cell::new(0usize);
    let result = runner.run(&prop::collection::vec(mutation(), 1..4), |ms| {
        n.set(n.get() + 1);
        let dir = fresh_copy(image, &work, n.get());
        let mut damaged = BTreeMap::new();
        for m in &ms {
            apply(&dir, m, &mut damaged);
        }
        let must_fail = damaged.values().any(|&d| d);
        let loaded = engine::restore::load(&dir);
        let inspected = engine::inspect::inspect(&dir);
        if must_fail {
            match &loaded {
                Err(_) => {}
                Ok(img) => {
                    // Only page files the memory restore verifies may be
                    // damaged behind `load`'s back, and it catches them.
                    let streamed: Vec<&String> = damaged
                        .iter()
                        .filter(|&(_, &d)| d)
                        .map(|(name, _)| name)
                        .collect();
                    prop_assert!(
                        streamed.iter().all(|n| img.streamed.contains(*n)),
                        "a damaged image loaded: {ms:?}"
                    );
                    let err = img.verify_streamed();
                    prop_assert!(err.is_err(), "damaged page files verified: {ms:?}");
                    let err = err.unwrap_err().to_string();
                    prop_assert!(
                        streamed.iter().any(|n| err.contains(n.as_str())),
                        "the error names no damaged file: {err}"
                    );
                }
            }
            prop_assert!(inspected.is_err(), "a damaged image was inspected: {ms:?}");
        }
        if let Err(e) = &loaded {
            // A clean error: a message that says something.
            prop_assert!(!e.to_string().is_empty());
        }
        fs::remove_dir_all(&dir).unwrap();
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn mutated_images_are_refused_cleanly() {
    let h = Harness::new("image-proptest");
    let sb = h.start_c("counter", &[]);
    let image = h.dump(&sb, &[]);
    engine::restore::load(&image).expect("the intact image loads");
    run_cases(&h, &image, "counter", 160);
}

/// The same with a process large enough for two page files.
#[test]
fn mutated_two_page_file_images_are_refused_cleanly() {
    let h = Harness::new("image-proptest2");
    let sb = h.start_c("bigmem", &["40"]);
    let image = h.dump(&sb, &[]);
    let names = files(&image);
    assert!(
        names.iter().any(|n| n == "pages-2.img") && names.iter().any(|n| n == "pages-2-1.img"),
        "a 40 MiB process has two page files: {names:?}"
    );
    let img = engine::restore::load(&image).expect("the intact image loads");
    assert!(img.streamed.contains("pages-2-1.img"), "{:?}", img.streamed);
    img.verify_streamed().expect("the intact page files verify");
    run_cases(&h, &image, "bigmem", 24);
}

/// A page file that no run uses (here one the manifest lists beside the
/// process's own) is verified by `load` itself, before anything is made.
#[test]
fn unused_page_file_is_verified_by_load() {
    let h = Harness::new("image-unused-pages");
    let sb = h.start_c("counter", &[]);
    let image = h.dump(&sb, &[]);
    for (sum, ok) in [(None, true), (Some("0123456789abcdef"), false)] {
        let dir = fresh_copy(&image, &h.root, usize::from(ok));
        let bytes = vec![7u8; 8192];
        let extra = dir.join("pages-2-1.img");
        fs::write(&extra, &bytes).unwrap();
        fs::set_permissions(&extra, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let mut m = manifest(&dir).unwrap();
        m["files"]["pages-2-1.img"] = serde_json::json!({
            "size": bytes.len(),
            "xxh3": sum.map(str::to_string).unwrap_or_else(|| format!("{:016x}", twox_hash::XxHash3_64::oneshot(&bytes))),
        });
        write_manifest(&dir, &m);
        let loaded = engine::restore::load(&dir);
        if ok {
            let img = loaded.expect("an intact extra page file loads");
            assert!(!img.streamed.contains("pages-2-1.img"));
        } else {
            let err = loaded
                .err()
                .expect("a damaged unused page file is refused")
                .to_string();
            assert!(
                err.contains("pages-2-1.img") && err.contains("checksum mismatch"),
                "{err}"
            );
        }
    }
}

// ---- cross-references ------------------------------------------------------
//
// Images whose every file is well-formed JSON with its checksum made right,
// so that what is tested is the semantic validation: an index or id one
// record uses to name another (socket peers, listeners and waiting clients,
// socket file owners, fd targets, pipes, epoll targets, PIDs and parents,
// thread ids, page runs' files, shared memory objects) set to another
// value. `load` must refuse a bad one with an error naming the image file,
// never panic; and a sample of the mutated images that `load` accepts are
// restored for real: the restore succeeds or fails cleanly, never with a
// panic, and a failed one leaves no process, state directory or cgroup.

/// Keys whose values name other records.
const REF_KEYS: &[&str] = &[
    "peer",
    "connecting_to",
    "waiting",
    "owner",
    "sender",
    "file",
    "socket",
    "pipe",
    "memfd",
    "pid",
    "ppid",
    "pgid",
    "sid",
    "tid",
    "fd",
    "tfd",
    "object",
    "id",
    "family",
    "sock_type",
    "state",
    "workload_pid",
];

#[derive(Debug, Clone)]
struct RefMutation {
    file: usize,
    key: usize,
    which: usize,
    value: i64,
}

fn ref_value() -> impl Strategy<Value = i64> {
    prop_oneof![
        4 => 0i64..12,
        1 => Just(-1i64),
        1 => Just(i32::MAX as i64),
        1 => Just(u32::MAX as i64),
        1 => Just(1i64 << 40),
        1 => 0i64..40000,
    ]
}

fn ref_mutation() -> impl Strategy<Value = RefMutation> {
    (0usize..64, 0..REF_KEYS.len(), any::<usize>(), ref_value()).prop_map(
        |(file, key, which, value)| RefMutation {
            file,
            key,
            which,
            value,
        },
    )
}

/// The values (numbers, or numbers in arrays) held under `key` anywhere in `v`.
fn slots(v: &mut Value, key: &str, out: &mut Vec<*mut Value>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o.iter_mut() {
                if k == key {
                    match x {
                        Value::Number(_) | Value::Null => out.push(x as *mut Value),
                        Value::Array(a) => {
                            for e in a.iter_mut().filter(|e| e.is_number()) {
                                out.push(e as *mut Value);
                            }
                        }
                        _ => slots(x, key, out),
                    }
                } else {
                    slots(x, key, out);
                }
            }
        }
        Value::Array(a) => {
            for x in a {
                slots(x, key, out);
            }
        }
        _ => {}
    }
}

/// Sets one reference of one metadata file (checksum made right). Returns
/// a description of the change, or None when the file has no such key.
fn apply_ref(dir: &Path, m: &RefMutation) -> Option<String> {
    let jsons: Vec<String> = files(dir)
        .into_iter()
        .filter(|n| n.ends_with(".json"))
        .collect();
    let name = jsons.get(m.file % jsons.len().max(1))?.clone();
    let mut v: Value = serde_json::from_slice(&fs::read(dir.join(&name)).ok()?).ok()?;
    // One of the reference keys the file holds.
    let present: Vec<&str> = REF_KEYS
        .iter()
        .copied()
        .filter(|k| {
            let mut f = Vec::new();
            slots(&mut v, k, &mut f);
            !f.is_empty()
        })
        .collect();
    let key = *present.get(m.key % present.len().max(1))?;
    let mut found = Vec::new();
    slots(&mut v, key, &mut found);
    let at = found[m.which % found.len()];
    // SAFETY: `at` points into `v`, which is alive and not otherwise
    // borrowed; only one pointer is used.
    let old = unsafe { std::mem::replace(&mut *at, Value::from(m.value)) };
    if old == m.value {
        return None;
    }
    rewrite(dir, &name, &serde_json::to_vec(&v).unwrap());
    Some(format!("{name}: {key} {old} -> {}", m.value))
}

/// Cgroup directories (three levels under each hierarchy's root) named
/// after sandbox `name`.
fn cgroups_named(name: &str) -> Vec<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mut level: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let fstype = post.split(' ').next()?;
            let mount = pre.split(' ').nth(4)?;
            (fstype == "cgroup" || fstype == "cgroup2").then(|| PathBuf::from(mount))
        })
        .collect();
    let mut found = Vec::new();
    for _ in 0..3 {
        let mut next = Vec::new();
        for d in &level {
            let Ok(rd) = fs::read_dir(d) else { continue };
            for e in rd.filter_map(|e| e.ok()) {
                if !e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    continue;
                }
                let f = e.file_name().to_string_lossy().into_owned();
                if f == name || f.starts_with(&format!("{name}-")) {
                    found.push(e.path());
                }
                next.push(e.path());
            }
        }
        level = next;
    }
    found
}

/// Host processes whose command line mentions `needle`.
fn processes_mentioning(needle: &Path) -> Vec<String> {
    let needle = needle.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for e in fs::read_dir("/proc").unwrap().filter_map(|e| e.ok()) {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmd) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(&needle) {
            found.push(format!("{pid}: {cmd}"));
        }
    }
    found
}

/// Restores `dir` with the binary as sandbox `name`: Ok(()) when it ran (it
/// is then removed again), Err(stderr) when it was refused. Either way no
/// panic may show, and a refused one leaves nothing behind.
fn restore_for_real(h: &Harness, dir: &Path, name: &str) -> Result<(), String> {
    let out = h.restore_raw(dir, name);
    let err = text(&out.stderr);
    assert!(
        !err.contains("panicked") && !err.contains("init died"),
        "restore of a crafted image: {}",
        describe(&out)
    );
    if out.status.success() {
        let rm = h.stasis(["rm", "--force", name]);
        assert!(rm.status.success(), "rm --force: {}", describe(&rm));
    }
    // What a restore leaves is gone when it returns: the processes may take
    // a moment to be reaped.
    wait_until(
        &format!("nothing left of sandbox {name}"),
        std::time::Duration::from_secs(10),
        || processes_mentioning(&h.dir).is_empty(),
        || format!("{:?}", processes_mentioning(&h.dir)),
    );
    assert!(
        !h.state.join(name).exists(),
        "the state directory of {name} is left"
    );
    let cg = cgroups_named(name);
    assert!(cg.is_empty(), "cgroups of {name} left: {cg:?}");
    if out.status.success() {
        Ok(())
    } else {
        assert!(!err.trim().is_empty(), "a refusal says nothing");
        Err(err)
    }
}

/// Random reference mutations of a real image: `load` refuses or accepts,
/// never panics, and names the image file in its refusal; `real` of the
/// accepted ones are restored for real.
fn run_ref_cases(h: &Harness, image: &Path, tag: &str, cases: u32, real: usize) {
    let work = h.root.join(format!("refs-{tag}"));
    fs::create_dir_all(&work).unwrap();
    let names = files(image);
    let mut runner = TestRunner::new(Config {
        cases: std::env::var("STASIS_PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(cases),
        failure_persistence: None,
        ..Config::default()
    });
    let n = std::cell::Cell::new(0usize);
    let restored = std::cell::Cell::new(0usize);
    let (mut refused, mut accepted) = (0usize, 0usize);
    let counts = std::cell::RefCell::new((&mut refused, &mut accepted));
    let result = runner.run(&prop::collection::vec(ref_mutation(), 1..3), |ms| {
        n.set(n.get() + 1);
        let dir = fresh_copy(image, &work, n.get());
        let changes: Vec<String> = ms.iter().filter_map(|m| apply_ref(&dir, m)).collect();
        match engine::restore::load(&dir) {
            Err(e) => {
                let e = e.to_string();
                // A bad record names its file; a tree the restore cannot
                // rebuild is refused as not supported, naming the process.
                prop_assert!(
                    names.iter().any(|f| e.contains(f.as_str()))
                        || e.contains("image")
                        || e.contains("is not supported yet"),
                    "the refusal names no image file: {e} ({changes:?})"
                );
                *counts.borrow_mut().0 += 1;
            }
            Ok(_) => {
                *counts.borrow_mut().1 += 1;
                if !changes.is_empty() && restored.get() < real {
                    restored.set(restored.get() + 1);
                    let name = h.new_name("crafted");
                    let _ = restore_for_real(h, &dir, &name);
                }
            }
        }
        fs::remove_dir_all(&dir).unwrap();
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    eprintln!(
        "{tag}: {} cases, {refused} refused by load, {accepted} accepted, {} of those restored for real",
        n.get(),
        restored.get()
    );
}

#[test]
fn crafted_references_are_refused_cleanly() {
    let h = Harness::new("image-refs");
    if missing(
        &h,
        "crafted_references_are_refused_cleanly",
        &["sock-diag-unix", "so-peek-off"],
    ) {
        return;
    }
    let sb = h.start_c("unix", &[]);
    let image = h.dump(&sb, &[]);
    engine::restore::load(&image).expect("the intact image loads");
    run_ref_cases(&h, &image, "unix", 300, 20);
    let _ = fs::remove_file(h.dir.join("ready"));
    let sb = h.start_c("fds", &["epoll"]);
    let image = h.dump(&sb, &[]);
    engine::restore::load(&image).expect("the intact image loads");
    run_ref_cases(&h, &image, "epoll", 200, 12);
}

/// Edits JSON file `name` of `dir` with `f` (checksum made right).
fn edit_json(dir: &Path, name: &str, f: impl FnOnce(&mut Value)) {
    let mut v: Value = serde_json::from_slice(&fs::read(dir.join(name)).unwrap()).unwrap();
    f(&mut v);
    assert!(rewrite(dir, name, &serde_json::to_vec(&v).unwrap()));
}

/// One crafted reference of each kind, refused before anything is made by
/// `load` and by `stasis restore`, with an error naming the file and the
/// reference; nothing is left.
#[test]
fn each_kind_of_bad_reference_is_named() {
    let h = Harness::new("image-badref");
    if missing(
        &h,
        "each_kind_of_bad_reference_is_named",
        &["sock-diag-unix", "so-peek-off"],
    ) {
        return;
    }
    let sb = h.start_c("unix", &[]);
    let image = h.dump(&sb, &[]);
    let procs: Vec<String> = files(&image)
        .into_iter()
        .filter(|n| n.starts_with("proc-"))
        .collect();
    let first_proc = procs[0].clone();
    let second_pid: i64 = procs[1]
        .trim_start_matches("proc-")
        .trim_end_matches(".json")
        .parse()
        .unwrap();
    type Edit = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Edit, Vec<&str>)> = vec![
        (
            "a socket's peer out of range",
            Box::new(|d: &Path| {
                edit_json(d, "files.json", |v| {
                    let s = v["sockets"]
                        .as_array_mut()
                        .unwrap()
                        .iter_mut()
                        .find(|s| s["unix"]["peer"].is_number())
                        .unwrap();
                    s["unix"]["peer"] = 9999.into();
                })
            }),
            vec!["files.json", "peer socket 9999"],
        ),
        (
            "a listener's waiting client that is no client",
            Box::new(|d: &Path| {
                edit_json(d, "files.json", |v| {
                    let socks = v["sockets"].as_array_mut().unwrap();
                    let l = socks
                        .iter()
                        .position(|s| {
                            s["unix"]["waiting"]
                                .as_array()
                                .is_some_and(|w| !w.is_empty())
                        })
                        .unwrap();
                    socks[l]["unix"]["waiting"][0] = l.into();
                })
            }),
            vec!["files.json", "waiting client socket"],
        ),
        (
            "a socket's peer that is not connected to it",
            Box::new(|d: &Path| {
                edit_json(d, "files.json", |v| {
                    let socks = v["sockets"].as_array_mut().unwrap();
                    let stream: Vec<usize> = socks
                        .iter()
                        .enumerate()
                        .filter(|(_, s)| s["sock_type"] == 1 && s["unix"]["peer"].is_number())
                        .map(|(i, _)| i)
                        .collect();
                    // Point a stream socket at another pair's end.
                    let (a, b) = (stream[0], stream[2]);
                    let b_peer = socks[b]["unix"]["peer"].clone();
                    let target = if b_peer == a { stream[3] } else { b };
                    socks[a]["unix"]["peer"] = target.into();
                })
            }),
            vec!["files.json", "is not connected to it"],
        ),
        (
            "a socket file owned by no unix socket",
            Box::new(|d: &Path| {
                edit_json(d, "files.json", |v| {
                    let f = v["unix_files"]
                        .as_array_mut()
                        .unwrap()
                        .iter_mut()
                        .find(|f| f["owner"].is_number())
                        .unwrap();
                    f["owner"] = 4242.into();
                })
            }),
            vec!["files.json", "owner socket 4242"],
        ),
        (
            "an fd of a description that does not exist",
            Box::new(move |d: &Path| {
                edit_json(d, &first_proc, |v| v["fds"][0]["file"] = 77777.into())
            }),
            vec!["proc-", "refers to file description 77777"],
        ),
        (
            "an fd number near i32::MAX",
            Box::new({
                let p = procs[0].clone();
                move |d: &Path| edit_json(d, &p, |v| v["fds"][0]["fd"] = (i32::MAX - 1).into())
            }),
            vec!["proc-", "out of range"],
        ),
        (
            "a process listed twice",
            Box::new(move |d: &Path| {
                edit_json(d, "inventory.json", |v| {
                    let procs = v["processes"].as_array_mut().unwrap();
                    let e = procs
                        .iter()
                        .find(|e| e["pid"] == second_pid)
                        .unwrap()
                        .clone();
                    procs.push(e);
                })
            }),
            vec!["inventory.json", "listed twice"],
        ),
        (
            "a description that is a socket twice",
            Box::new(|d: &Path| {
                edit_json(d, "files.json", |v| {
                    let files = v["files"].as_array_mut().unwrap();
                    let socks: Vec<usize> = files
                        .iter()
                        .enumerate()
                        .filter(|(_, f)| f["kind"] == "socket")
                        .map(|(i, _)| i)
                        .collect();
                    let s = files[socks[0]]["socket"].clone();
                    files[socks[1]]["socket"] = s;
                })
            }),
            vec!["files.json", "file description"],
        ),
    ];
    for (what, edit, words) in cases {
        let dir = fresh_copy(&image, &h.root, 0);
        edit(&dir);
        let err = match engine::restore::load(&dir) {
            Ok(_) => panic!("{what}: the image loads"),
            Err(e) => e.to_string(),
        };
        for w in &words {
            assert!(err.contains(w), "{what}: load says {err:?}, not {w:?}");
        }
        let name = h.new_name("badref");
        let err = restore_for_real(&h, &dir, &name)
            .err()
            .unwrap_or_else(|| panic!("{what}: restored"));
        for w in &words {
            assert!(
                err.contains(w),
                "{what}: stasis restore says {err:?}, not {w:?}"
            );
        }
    }
}

/// An image of a newer minor version with a field this stasis does not know
/// (not declared ignorable) is refused by `stasis restore` with a message
/// naming both versions and the field; a newer major is refused whatever it
/// holds; nothing is left.
#[test]
fn image_from_the_future_is_refused() {
    let h = Harness::new("image-future");
    let sb = h.start_c("counter", &[]);
    let image = h.dump(&sb, &[]);
    let m = manifest(&image).unwrap();
    let major = m["format_version"].as_u64().unwrap();
    let minor = m["format_minor"].as_u64().unwrap();
    let proc = files(&image)
        .into_iter()
        .find(|n| n.starts_with("proc-"))
        .unwrap();
    let dir = fresh_copy(&image, &h.root, 1);
    edit_json(&dir, &proc, |v| {
        v["threads"][0]["from_the_future"] = serde_json::json!({ "x": 1 })
    });
    let mut m2 = manifest(&dir).unwrap();
    m2["format_minor"] = (minor + 1).into();
    write_manifest(&dir, &m2);
    let err = restore_for_real(&h, &dir, &h.new_name("future"))
        .expect_err("an image with an unknown field of a newer minor restored");
    for w in [
        format!("format version {major}.{}", minor + 1),
        format!("{major}.{minor}"),
        "threads[0].from_the_future".to_string(),
        proc.clone(),
    ] {
        assert!(err.contains(&w), "{err} does not name {w}");
    }
    // Declared ignorable: it restores, and the workload runs on.
    m2["ignorable"] = serde_json::json!(["proc-*.json:from_the_future"]);
    write_manifest(&dir, &m2);
    restore_for_real(&h, &dir, &h.new_name("ignorable")).expect("an ignorable field");
    // A newer major: refused.
    let dir = fresh_copy(&image, &h.root, 2);
    let mut m3 = manifest(&dir).unwrap();
    m3["format_version"] = (major + 1).into();
    write_manifest(&dir, &m3);
    let err = restore_for_real(&h, &dir, &h.new_name("major")).expect_err("a newer major restored");
    assert!(
        err.contains(&format!("format version {}.{minor}", major + 1)),
        "{err}"
    );
}
