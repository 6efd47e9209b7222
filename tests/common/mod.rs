//! Harness of the end-to-end tests of `stasis dump` and `restore`.
//!
//! The workloads (tests/workloads) check their own state: each gets a
//! directory, builds its state, writes `ready` there, waits for SIGTERM, checks
//! the state and writes `verdict` ("PASS ..." or "FAIL: reason"). The harness
//! starts a workload in a sandbox, waits for `ready`, dumps it, restores the
//! image under a new name, sends SIGTERM and reads the verdict. Every wait is
//! on an explicit file with a bounded deadline. Every test has its own state
//! directory (`STASIS_STATE_DIR`) and its own sandbox names, so the tests run
//! in parallel; sandboxes are removed in `Drop`, even when a test fails.
//! `stasis kill` signals the workload's root process (PID 2 of its sandbox);
//! workloads with children forward SIGTERM to them themselves.
#![allow(dead_code)]

pub mod tcp_client;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

pub const STASIS: &str = env!("CARGO_BIN_EXE_stasis");
/// On the host file system, visible inside every sandbox (unlike its /tmp).
pub const TMP: &str = env!("CARGO_TARGET_TMPDIR");
pub const WORKLOADS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/workloads");

pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
pub const VERDICT_TIMEOUT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(5);

/// A name no other test, in this process or another, uses.
pub fn unique(tag: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{tag}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn mtime(p: &Path) -> Option<SystemTime> {
    fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// Path of the compiled C workload `name` (tests/workloads/NAME.c), built
/// with gcc on first use in this process, or reused when newer than its
/// sources. Built under a temporary name and renamed, so test binaries
/// running at the same time never see half a file.
pub fn workload(name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let mut built = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(p) = built.get(name) {
        return p.clone();
    }
    let src = Path::new(WORKLOADS).join(format!("{name}.c"));
    let header = Path::new(WORKLOADS).join("wl.h");
    let out_dir = Path::new(TMP).join("workloads");
    fs::create_dir_all(&out_dir).expect("creating the workload build directory");
    let out = out_dir.join(name);
    let fresh = match (mtime(&out), mtime(&src), mtime(&header)) {
        (Some(o), Some(s), Some(h)) => o >= s && o >= h,
        _ => false,
    };
    if !fresh {
        let tmp = out_dir.join(format!(".{name}.{}", std::process::id()));
        let result = Command::new("gcc")
            .args([
                "-std=c11", "-O1", "-g", "-Wall", "-Wextra", "-Werror", "-pthread", "-o",
            ])
            .arg(&tmp)
            .arg(&src)
            .output()
            .expect("running gcc");
        assert!(
            result.status.success(),
            "gcc {}: {}",
            src.display(),
            String::from_utf8_lossy(&result.stderr)
        );
        fs::rename(&tmp, &out).expect("renaming the built workload");
    }
    built.insert(name.to_string(), out.clone());
    out
}

/// Absolute path of python3 (the sandbox may start workloads without PATH).
pub fn python3() -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join("python3"))
        .find(|p| p.is_file())
        .expect("python3 is not installed")
}

/// The python3 workload's path.
pub fn python_workload() -> PathBuf {
    Path::new(WORKLOADS).join("pyloop.py")
}

/// A `sh -c` loop that forks on every step (command substitution, `mv`,
/// `/bin/true`, `sleep`). It keeps its step in the shell variable `i`, writes
/// it to DIR/count and appends it to DIR/seq on every step, and checks at the
/// top of every step (and after SIGTERM) that DIR/count holds `i`: a restored
/// shell whose `i` started again from 0 fails. Ready after 20 steps.
pub const SHELL_LOOP: &str = r#"export PATH="${PATH:-/usr/bin:/bin}"
d=$1
i=0
bad=
term=
trap 'term=1' TERM
echo 0 > "$d/count"
while :; do
  c=$(cat "$d/count")
  [ "$c" = "$i" ] || bad="${bad:-the count file says $c but the shell variable i is $i}"
  [ -n "$term" ] && break
  i=$((i + 1))
  echo $i > "$d/count.tmp"
  mv "$d/count.tmp" "$d/count"
  echo $i >> "$d/seq"
  /bin/true
  [ $i = 20 ] && { echo $i > "$d/.ready.tmp"; mv "$d/.ready.tmp" "$d/ready"; }
  sleep 0.01
done
[ -n "$STASIS_TEST_CORRUPT" ] && i=$((i + 1))
c=$(cat "$d/count")
[ "$c" = "$i" ] || bad="${bad:-the count file says $c but the shell variable i is $i}"
if [ -z "$bad" ]; then echo "PASS count=$i" > "$d/.verdict.tmp"; r=0; else echo "FAIL: $bad" > "$d/.verdict.tmp"; r=1; fi
mv "$d/.verdict.tmp" "$d/verdict"
exit $r
"#;

/// Whether /proc/cpuinfo lists the CPU flag `flag` (avx512f, avx2, ...).
pub fn cpu_has(flag: &str) -> bool {
    fs::read_to_string("/proc/cpuinfo")
        .map(|s| {
            s.lines()
                .filter(|l| l.starts_with("flags"))
                .any(|l| l.split_whitespace().any(|f| f == flag))
        })
        .unwrap_or(false)
}

/// Waits until `cond` holds, or panics with `what` and `context()` after `timeout`.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> bool,
    context: impl FnOnce() -> String,
) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() >= deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                context()
            );
        }
        std::thread::sleep(POLL);
    }
}

/// Waits until no sandbox of state directory `state` is still ending: a
/// dump returns once its sandbox is killed and removed, and a keeper process
/// removes the sandbox's cgroup (and its `.ending-NAME` marker) once the
/// killed processes have exited.
pub fn wait_endings(state: &Path) {
    let endings = || -> Vec<String> {
        fs::read_dir(state)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".ending-"))
            .collect()
    };
    wait_until(
        "the dumped sandboxes to finish ending",
        Duration::from_secs(60),
        || endings().is_empty(),
        || format!("still ending: {:?}", endings()),
    );
}

/// Reads a file the workloads write atomically; None while it does not exist.
pub fn read_trimmed(p: &Path) -> Option<String> {
    fs::read_to_string(p).ok().map(|s| s.trim().to_string())
}

/// A number in a workload's file (DIR/count).
pub fn read_number(p: &Path) -> Option<u64> {
    read_trimmed(p).and_then(|s| s.parse().ok())
}

/// The value of `key=` in a "PASS key=value ..." verdict.
pub fn verdict_field<'a>(verdict: &'a str, key: &str) -> Option<&'a str> {
    verdict
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn describe(o: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        text(&o.stdout),
        text(&o.stderr)
    )
}

/// One test's world: a state directory, a workload directory, its sandboxes.
pub struct Harness {
    pub tag: String,
    /// Everything of this test lives under here.
    pub root: PathBuf,
    /// `STASIS_STATE_DIR` of every invocation.
    pub state: PathBuf,
    /// The workload's directory (ready, verdict and the workload's files).
    pub dir: PathBuf,
    sandboxes: Mutex<Vec<String>>,
    images: AtomicUsize,
}

impl Harness {
    pub fn new(tag: &str) -> Self {
        // Sandbox names are made from it: keep to [a-z0-9-].
        let tag: String = tag
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        let tag = tag.as_str();
        let root = Path::new(TMP).join(unique(tag));
        let _ = fs::remove_dir_all(&root);
        let state = root.join("state");
        let dir = root.join("work");
        fs::create_dir_all(&state).expect("creating the state directory");
        fs::create_dir_all(&dir).expect("creating the workload directory");
        // Workloads may run under other credentials one day: let them write here.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777))
            .expect("chmod of the workload directory");
        Harness {
            tag: tag.to_string(),
            root,
            state,
            dir,
            sandboxes: Mutex::new(Vec::new()),
            images: AtomicUsize::new(0),
        }
    }

    /// A `stasis` command with this test's state directory.
    pub fn command(&self) -> Command {
        let mut c = Command::new(STASIS);
        c.env("STASIS_STATE_DIR", &self.state)
            .env_remove("STASIS_TEST_CORRUPT")
            .stdin(Stdio::null());
        c
    }

    /// Runs `stasis ARGS` to completion.
    pub fn stasis<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command().args(args).output().expect("running stasis")
    }

    /// A fresh sandbox name, removed when the harness is dropped.
    pub fn new_name(&self, what: &str) -> String {
        let name = unique(&format!("{}-{what}", self.tag));
        self.sandboxes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(name.clone());
        name
    }

    /// A path for an image directory (not created).
    pub fn image_path(&self) -> PathBuf {
        self.root.join(format!(
            "image-{}",
            self.images.fetch_add(1, Ordering::Relaxed)
        ))
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// `stasis run -d --name NAME -- ARGV...`; returns NAME.
    pub fn run<S: AsRef<OsStr>>(&self, argv: &[S]) -> String {
        let name = self.new_name("run");
        let out = self
            .command()
            .args(["run", "-d", "--name", &name, "--"])
            .args(argv)
            .output()
            .expect("running stasis run");
        assert!(
            out.status.success(),
            "stasis run failed: {}",
            describe(&out)
        );
        assert_eq!(
            text(&out.stdout).trim(),
            name,
            "stasis run -d prints the sandbox's name"
        );
        name
    }

    /// Runs a workload and waits for its ready file.
    pub fn start<S: AsRef<OsStr>>(&self, argv: &[S]) -> String {
        let name = self.run(argv);
        self.wait_ready(&name);
        name
    }

    /// Starts the C workload `wl` with `args` then the workload directory.
    pub fn start_c(&self, wl: &str, args: &[&str]) -> String {
        self.start(&self.c_argv(wl, args))
    }

    /// The command line of the C workload `wl`: its binary, `args`, the workload directory.
    pub fn c_argv(&self, wl: &str, args: &[&str]) -> Vec<std::ffi::OsString> {
        let mut argv = vec![workload(wl).into_os_string()];
        argv.extend(args.iter().map(|a| a.into()));
        argv.push(self.dir.clone().into_os_string());
        argv
    }

    pub fn logs(&self, name: &str) -> String {
        let out = self.stasis(["logs", name]);
        format!(
            "--- log of sandbox {name} ({}) ---\n{}{}--- end of log ---",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        )
    }

    pub fn wait_ready(&self, name: &str) {
        let ready = self.path("ready");
        wait_until(
            &format!("{} (sandbox {name})", ready.display()),
            READY_TIMEOUT,
            || ready.exists(),
            || self.logs(name),
        );
    }

    /// `stasis dump NAME -D DIR EXTRA...`, whatever its outcome.
    pub fn dump_raw(&self, name: &str, image: &Path, extra: &[&str]) -> Output {
        let mut c = self.command();
        c.args(["dump", name, "-D"]).arg(image).args(extra);
        c.output().expect("running stasis dump")
    }

    /// Dumps `name` into a new image directory, which it returns.
    pub fn dump(&self, name: &str, extra: &[&str]) -> PathBuf {
        let image = self.image_path();
        let out = self.dump_raw(name, &image, extra);
        assert!(
            out.status.success(),
            "stasis dump {name} failed: {}\n{}",
            describe(&out),
            self.logs(name)
        );
        image
    }

    /// `stasis restore IMAGE --name NAME -d`, whatever its outcome.
    pub fn restore_raw(&self, image: &Path, name: &str) -> Output {
        let mut c = self.command();
        c.arg("restore").arg(image).args(["--name", name, "-d"]);
        c.output().expect("running stasis restore")
    }

    /// Restores `image` into a new sandbox, whose name it returns. Removes a
    /// verdict left in the workload directory first.
    pub fn restore(&self, image: &Path) -> String {
        let _ = fs::remove_file(self.path("verdict"));
        let name = self.new_name("restored");
        let out = self.restore_raw(image, &name);
        assert!(
            out.status.success(),
            "stasis restore {} failed: {}\n{}",
            image.display(),
            describe(&out),
            self.logs(&name)
        );
        assert_eq!(
            text(&out.stdout).trim(),
            name,
            "stasis restore -d prints the sandbox's name"
        );
        name
    }

    /// `stasis kill NAME --signal SIG`.
    pub fn signal(&self, name: &str, sig: &str) {
        let out = self.stasis(["kill", name, "--signal", sig]);
        assert!(
            out.status.success(),
            "stasis kill {name} --signal {sig} failed: {}\n{}",
            describe(&out),
            self.logs(name)
        );
    }

    /// Waits for DIR/verdict, removes it and returns it.
    pub fn verdict(&self, name: &str) -> String {
        let path = self.path("verdict");
        wait_until(
            &format!("{} (sandbox {name})", path.display()),
            VERDICT_TIMEOUT,
            || path.exists(),
            || self.logs(name),
        );
        let v = read_trimmed(&path).unwrap_or_default();
        fs::remove_file(&path).expect("removing the verdict");
        v
    }

    /// Sends SIGTERM and asserts the workload's verdict is PASS; returns it.
    pub fn expect_pass(&self, name: &str) -> String {
        self.signal(name, "TERM");
        let v = self.verdict(name);
        assert!(
            v == "PASS" || v.starts_with("PASS "),
            "workload in sandbox {name} says: {v}\n{}",
            self.logs(name)
        );
        v
    }

    /// Dumps `name` (which kills it), restores the image under a new name and
    /// returns (image, restored name).
    pub fn dump_and_restore(&self, name: &str) -> (PathBuf, String) {
        let image = self.dump(name, &[]);
        let restored = self.restore(&image);
        (image, restored)
    }

    /// `stasis ps --json`.
    pub fn ps_json(&self) -> serde_json::Value {
        let out = self.stasis(["ps", "--json"]);
        assert!(
            out.status.success(),
            "stasis ps --json failed: {}",
            describe(&out)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("stasis ps --json printed no JSON ({e}): {}", describe(&out))
        })
    }

    /// Whether `stasis ps --json` mentions a sandbox called `name`.
    pub fn ps_lists(&self, name: &str) -> bool {
        json_has_string(&self.ps_json(), name)
    }

    /// `stasis inspect IMAGE --json`.
    pub fn inspect_json(&self, image: &Path) -> serde_json::Value {
        let mut c = self.command();
        c.arg("inspect").arg(image).arg("--json");
        let out = c.output().expect("running stasis inspect");
        assert!(
            out.status.success(),
            "stasis inspect failed: {}",
            describe(&out)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "stasis inspect --json printed no JSON ({e}): {}",
                describe(&out)
            )
        })
    }

    /// Waits until DIR/count holds a number above `above`; returns it.
    pub fn wait_count_above(&self, name: &str, above: u64) -> u64 {
        let path = self.path("count");
        let mut last = None;
        wait_until(
            &format!("{} to go past {above} (sandbox {name})", path.display()),
            VERDICT_TIMEOUT,
            || {
                last = read_number(&path);
                last.is_some_and(|n| n > above)
            },
            || self.logs(name),
        );
        last.unwrap_or_default()
    }

    pub fn rm(&self, name: &str) -> Output {
        self.stasis(["rm", "--force", name])
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let names = std::mem::take(&mut *self.sandboxes.lock().unwrap_or_else(|e| e.into_inner()));
        for name in names.iter().rev() {
            let _ = self.rm(name);
        }
        if std::thread::panicking() {
            eprintln!(
                "{}: keeping {} for inspection",
                self.tag,
                self.root.display()
            );
        } else {
            let _ = fs::remove_dir_all(&self.root);
        }
    }
}

/// Whether any string in `v` (key or value) equals `s`.
pub fn json_has_string(v: &serde_json::Value, s: &str) -> bool {
    match v {
        serde_json::Value::String(x) => x == s,
        serde_json::Value::Array(a) => a.iter().any(|x| json_has_string(x, s)),
        serde_json::Value::Object(o) => o.iter().any(|(k, x)| k == s || json_has_string(x, s)),
        _ => false,
    }
}

/// Files of an image directory whose names start with `prefix`, largest first.
pub fn image_files(image: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<(u64, PathBuf)> = fs::read_dir(image)
        .unwrap_or_else(|e| panic!("reading image {}: {e}", image.display()))
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| (e.metadata().map(|m| m.len()).unwrap_or(0), e.path()))
        .collect();
    v.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    v.into_iter().map(|(_, p)| p).collect()
}

/// Copies an image directory, keeping its 0700/0600 modes.
pub fn copy_image(from: &Path, to: &Path) {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .mode(0o700)
        .create(to)
        .expect("creating the image copy");
    fs::set_permissions(to, fs::Permissions::from_mode(0o700))
        .expect("chmod 0700 of the image copy");
    for e in fs::read_dir(from).expect("reading the image") {
        let e = e.expect("reading the image");
        let dst = to.join(e.file_name());
        fs::copy(e.path(), &dst).expect("copying an image file");
        let mode = e
            .metadata()
            .expect("stat of an image file")
            .permissions()
            .mode();
        fs::set_permissions(&dst, fs::Permissions::from_mode(mode & 0o777))
            .expect("chmod of an image file");
    }
}

/// Whether `stasis check` finds any of `names` missing on this machine (a
/// test needing them is then skipped, and says so).
pub fn missing(h: &Harness, test: &str, names: &[&str]) -> bool {
    let mut c = h.command();
    c.args(["check", "--json"]);
    for n in names {
        c.args(["--feature", n]);
    }
    let out = c.output().expect("running stasis check");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stasis check --json: {e}: {}", describe(&out)));
    let gone: Vec<String> = v["features"]
        .as_array()
        .expect("features")
        .iter()
        .filter(|f| f["status"] == "missing")
        .map(|f| format!("{} ({})", f["name"], f["detail"]))
        .collect();
    if !gone.is_empty() {
        eprintln!(
            "skipping {test}: stasis check says missing: {}",
            gone.join(", ")
        );
    }
    !gone.is_empty()
}

/// `stasis run -d --profile PROFILE --name NAME -- ARGV` (no wait for
/// readiness); returns NAME.
pub fn run_with_profile<S: AsRef<std::ffi::OsStr>>(
    h: &Harness,
    profile: &Path,
    argv: &[S],
) -> String {
    let name = h.new_name("run");
    let out = h
        .command()
        .args(["run", "-d", "--name", &name, "--profile"])
        .arg(profile)
        .arg("--")
        .args(argv)
        .output()
        .expect("running stasis run");
    assert!(
        out.status.success(),
        "stasis run failed: {}",
        describe(&out)
    );
    name
}

/// Flips the lowest bit of the byte at `at` of an image file (damage its
/// checksum must catch).
pub fn flip_byte(file: &Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .expect("opening an image file");
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).expect("reading an image byte");
    b[0] ^= 0x01;
    f.write_all_at(&b, at).expect("writing an image byte");
}

/// Reads an image's JSON file `name`, lets `edit` change it, writes it back
/// and puts its new size and checksum in the manifest.
pub fn edit_image_json(
    image: &std::path::Path,
    name: &str,
    edit: impl FnOnce(&mut serde_json::Value),
) {
    let path = image.join(name);
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("image file")).expect("JSON");
    edit(&mut v);
    let bytes = serde_json::to_vec(&v).expect("encoding");
    std::fs::write(&path, &bytes).expect("writing the image file");
    let mpath = image.join("manifest.json");
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&mpath).expect("manifest")).expect("JSON");
    m["files"][name] = serde_json::json!({
        "size": bytes.len(),
        "xxh3": format!("{:016x}", twox_hash::XxHash3_64::oneshot(&bytes)),
    });
    std::fs::write(&mpath, serde_json::to_vec(&m).expect("encoding"))
        .expect("writing the manifest");
}
