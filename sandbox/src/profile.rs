//! Sandbox profiles: what a sandbox looks like, loaded from TOML.
//!
//! Every key is documented in `configs/default.toml`; `Profile::default()` is
//! exactly that file's settings. Unknown keys and bad values are errors that
//! name the key, the file and the line.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Errors while loading or checking a profile.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("cannot read profile {file}: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    /// A syntax error, an unknown key or a bad value.
    #[error("profile {file}, line {line}{}: {message}", key.as_deref().map(|k| format!(", key `{k}`")).unwrap_or_default())]
    Invalid {
        file: PathBuf,
        line: usize,
        key: Option<String>,
        message: String,
    },
}

/// A complete sandbox description. See `configs/default.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Profile {
    /// Host name inside the sandbox; the sandbox's name when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    pub namespaces: Namespaces,
    pub process: ProcessSettings,
    pub mounts: Mounts,
    pub network: Network,
    pub cgroup: CgroupSettings,
}

/// Which namespaces the sandbox gets of its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Namespaces {
    pub pid: bool,
    pub mount: bool,
    pub net: bool,
    pub uts: bool,
    pub ipc: bool,
    pub cgroup: bool,
}

impl Default for Namespaces {
    fn default() -> Self {
        Namespaces {
            pid: true,
            mount: true,
            net: true,
            uts: true,
            ipc: true,
            cgroup: true,
        }
    }
}

/// The workload's process attributes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessSettings {
    /// The workload's environment (nothing else is passed, except `pass_env`).
    pub env: BTreeMap<String, String>,
    /// Names of variables copied from the environment of `stasis run`.
    pub pass_env: Vec<String>,
    /// Working directory (inside the sandbox's root).
    pub cwd: PathBuf,
    pub user: u32,
    pub group: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Capabilities the workload keeps; every other one leaves the bounding set.
    pub capabilities: Vec<CapName>,
    pub no_new_privs: bool,
    /// Resource limits, by name (`nofile`, `nproc`, `core`, ...).
    pub rlimits: BTreeMap<RlimitName, Rlimit>,
}

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The capabilities a workload keeps by default (the usual container set).
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

impl Default for ProcessSettings {
    fn default() -> Self {
        let mut env = BTreeMap::new();
        env.insert("PATH".to_string(), DEFAULT_PATH.to_string());
        ProcessSettings {
            env,
            pass_env: Vec::new(),
            cwd: PathBuf::from("/"),
            user: 0,
            group: 0,
            groups: Vec::new(),
            capabilities: DEFAULT_CAPABILITIES
                .iter()
                .map(|c| c.parse().expect("known capability"))
                .collect(),
            no_new_privs: true,
            rlimits: BTreeMap::new(),
        }
    }
}

/// Mounts inside the sandbox's mount namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Mounts {
    /// A fresh procfs on /proc (the sandbox's PID namespace).
    pub proc: bool,
    /// A private tmpfs on /tmp.
    pub tmp: bool,
    /// A private tmpfs on /dev/shm.
    pub dev_shm: bool,
    /// A /dev of the sandbox's own: a read-only tmpfs holding only null,
    /// zero, full, random, urandom, tty, userfaultfd (when the host has it),
    /// a devpts instance of its own on /dev/pts with /dev/ptmx from it,
    /// /dev/shm, the fd symlinks, and the `devices` below. When false the
    /// sandbox sees the host's /dev, terminals included.
    pub dev: bool,
    /// More host devices for the sandbox's /dev, by their path under /dev
    /// ("fuse", "net/tun", ...), bind-mounted from the host's.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
    /// A directory to pivot_root into; the host's root when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root: Option<PathBuf>,
    /// Bind mounts, in order.
    pub bind: Vec<Bind>,
}

impl Default for Mounts {
    fn default() -> Self {
        Mounts {
            proc: true,
            tmp: true,
            dev_shm: true,
            dev: true,
            devices: Vec::new(),
            root: None,
            bind: Vec::new(),
        }
    }
}

/// One bind mount: `source` on the host, `target` inside the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bind {
    pub source: PathBuf,
    pub target: PathBuf,
    #[serde(default)]
    pub readonly: bool,
}

/// The sandbox's network namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Network {
    /// Bring `lo` up.
    pub loopback: bool,
    /// A veth pair to the host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub veth: Option<Veth>,
}

impl Default for Network {
    fn default() -> Self {
        Network {
            loopback: true,
            veth: None,
        }
    }
}

/// A veth pair: one end inside the sandbox, one in the host's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Veth {
    /// Interface name inside the sandbox.
    #[serde(default = "default_veth_name")]
    pub name: String,
    /// Interface name on the host; derived from the sandbox name when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_name: Option<String>,
    /// Address of the sandbox's end, with prefix length.
    pub address: Cidr,
    /// Address of the host's end, with prefix length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_address: Option<Cidr>,
    /// Routes inside the sandbox.
    #[serde(default)]
    pub routes: Vec<Route>,
}

fn default_veth_name() -> String {
    "eth0".to_string()
}

/// A route inside the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// `default` or a network with prefix length.
    pub destination: Destination,
    /// Next hop; a direct route over the veth when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
}

/// The sandbox's cgroup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CgroupSettings {
    /// Path, relative to each hierarchy's root, under which sandboxes' cgroups are made.
    pub parent: String,
    /// Which freezer to use: `auto`, `v2` or `v1`.
    pub freezer: FreezerChoice,
    /// Memory limit (bytes, or with a K/M/G suffix).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_max: Option<ByteSize>,
    /// Limit on the number of tasks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pids_max: Option<u64>,
}

impl Default for CgroupSettings {
    fn default() -> Self {
        CgroupSettings {
            parent: "stasis".to_string(),
            freezer: FreezerChoice::Auto,
            memory_max: None,
            pids_max: None,
        }
    }
}

/// Which cgroup freezer a sandbox uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FreezerChoice {
    /// cgroup v2's `cgroup.freeze` when a cgroup2 hierarchy is mounted, else v1's freezer.
    Auto,
    V2,
    V1,
}

/// A capability name as `CAP_NAME`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CapName(pub caps::Capability);

impl FromStr for CapName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        caps::Capability::from_str(&caps::to_canonical(s))
            .map(CapName)
            .map_err(|_| format!("unknown capability `{s}`"))
    }
}

impl Serialize for CapName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_string())
    }
}

impl<'de> Deserialize<'de> for CapName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An address with a prefix length, such as `10.0.0.2/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}` is not ADDRESS/PREFIX"))?;
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("`{a}` is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = p
            .parse()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("`{p}` is not a prefix length (0..={max})"))?;
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A route destination: `default` or a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    Default,
    Net(Cidr),
}

impl Serialize for Destination {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Destination::Default => s.serialize_str("default"),
            Destination::Net(c) => c.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Destination {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == "default" {
            return Ok(Destination::Default);
        }
        s.parse()
            .map(Destination::Net)
            .map_err(|e| serde::de::Error::custom(format!("{e} (or `default`)")))
    }
}

/// A size in bytes, written as an integer or with a K, M or G suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let (num, mult) = match t.chars().last() {
            Some('k' | 'K') => (&t[..t.len() - 1], 1u64 << 10),
            Some('m' | 'M') => (&t[..t.len() - 1], 1 << 20),
            Some('g' | 'G') => (&t[..t.len() - 1], 1 << 30),
            _ => (t, 1),
        };
        num.trim()
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(mult))
            .map(ByteSize)
            .ok_or_else(|| format!("`{s}` is not a size (bytes, or a number with K, M or G)"))
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size in bytes, or a string such as \"256M\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A resource limit's name, as in `ulimit` (`nofile`, `nproc`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RlimitName {
    As,
    Core,
    Cpu,
    Data,
    Fsize,
    Locks,
    Memlock,
    Msgqueue,
    Nice,
    Nofile,
    Nproc,
    Rss,
    Rtprio,
    Rttime,
    Sigpending,
    Stack,
}

impl RlimitName {
    /// The `RLIMIT_*` resource number.
    pub fn resource(self) -> libc::__rlimit_resource_t {
        match self {
            RlimitName::As => libc::RLIMIT_AS,
            RlimitName::Core => libc::RLIMIT_CORE,
            RlimitName::Cpu => libc::RLIMIT_CPU,
            RlimitName::Data => libc::RLIMIT_DATA,
            RlimitName::Fsize => libc::RLIMIT_FSIZE,
            RlimitName::Locks => libc::RLIMIT_LOCKS,
            RlimitName::Memlock => libc::RLIMIT_MEMLOCK,
            RlimitName::Msgqueue => libc::RLIMIT_MSGQUEUE,
            RlimitName::Nice => libc::RLIMIT_NICE,
            RlimitName::Nofile => libc::RLIMIT_NOFILE,
            RlimitName::Nproc => libc::RLIMIT_NPROC,
            RlimitName::Rss => libc::RLIMIT_RSS,
            RlimitName::Rtprio => libc::RLIMIT_RTPRIO,
            RlimitName::Rttime => libc::RLIMIT_RTTIME,
            RlimitName::Sigpending => libc::RLIMIT_SIGPENDING,
            RlimitName::Stack => libc::RLIMIT_STACK,
        }
    }
}

/// Soft and hard limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rlimit {
    pub soft: RlimitValue,
    pub hard: RlimitValue,
}

/// A limit: a number or `"unlimited"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RlimitValue {
    Unlimited,
    Value(u64),
}

impl RlimitValue {
    pub fn raw(self) -> libc::rlim_t {
        match self {
            RlimitValue::Unlimited => libc::RLIM_INFINITY,
            RlimitValue::Value(v) => v as libc::rlim_t,
        }
    }
}

impl Serialize for RlimitValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            RlimitValue::Unlimited => s.serialize_str("unlimited"),
            RlimitValue::Value(v) => s.serialize_u64(*v),
        }
    }
}

impl<'de> Deserialize<'de> for RlimitValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = RlimitValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a non-negative integer or \"unlimited\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RlimitValue, E> {
                Ok(RlimitValue::Value(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RlimitValue, E> {
                u64::try_from(v)
                    .map(RlimitValue::Value)
                    .map_err(|_| E::custom("a limit cannot be negative"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RlimitValue, E> {
                if v == "unlimited" {
                    Ok(RlimitValue::Unlimited)
                } else {
                    Err(E::custom(format!(
                        "`{v}` is not a limit (an integer or \"unlimited\")"
                    )))
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl Profile {
    /// Loads and checks a profile file.
    pub fn load(path: &Path) -> Result<Profile, ProfileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        Profile::from_toml(&text, path)
    }

    /// Parses and checks a profile; `file` is only used in error messages.
    pub fn from_toml(text: &str, file: &Path) -> Result<Profile, ProfileError> {
        let profile: Profile = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start)).unwrap_or_default();
            // The toml error's text names the key path as "in `a.b`".
            let shown = e.to_string();
            let key = shown
                .lines()
                .find_map(|l| l.strip_prefix("in `").and_then(|r| r.strip_suffix('`')))
                .map(str::to_string)
                .or_else(|| key_at(text, e.span()));
            ProfileError::Invalid {
                file: file.to_path_buf(),
                line,
                key,
                message: e.message().trim().to_string(),
            }
        })?;
        profile
            .validate()
            .map_err(|(key, message)| ProfileError::Invalid {
                file: file.to_path_buf(),
                line: find_key_line(text, &key).unwrap_or(0),
                key: Some(key),
                message,
            })?;
        Ok(profile)
    }

    /// Serializes the profile as TOML (as stored in a sandbox's state directory).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a profile always serializes")
    }

    /// Checks values that depend on each other. Returns the key at fault.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |k: &str, m: String| Err((k.to_string(), m));
        if let Some(h) = &self.hostname {
            if !self.namespaces.uts {
                return err("hostname", "needs namespaces.uts = true".into());
            }
            if h.is_empty() || h.len() > 64 {
                return err("hostname", format!("`{h}` must be 1 to 64 bytes"));
            }
        }
        if !self.process.cwd.is_absolute() {
            return err(
                "process.cwd",
                format!("`{}` is not absolute", self.process.cwd.display()),
            );
        }
        for k in self.process.env.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return err("process.env", format!("`{k}` is not a variable name"));
            }
        }
        for (n, l) in &self.process.rlimits {
            if l.soft.raw() > l.hard.raw() {
                return err(
                    "process.rlimits",
                    format!("{n:?}: the soft limit is above the hard limit"),
                );
            }
        }
        if !self.namespaces.mount {
            if self.mounts.root.is_some() {
                return err("mounts.root", "needs namespaces.mount = true".into());
            }
            if !self.mounts.bind.is_empty() {
                return err("mounts.bind", "needs namespaces.mount = true".into());
            }
        }
        let own_dev = self.namespaces.mount && self.mounts.dev;
        if !own_dev && !self.mounts.devices.is_empty() {
            return err(
                "mounts.devices",
                "needs mounts.dev = true and namespaces.mount = true".into(),
            );
        }
        for d in &self.mounts.devices {
            if d.is_empty()
                || d.starts_with('/')
                || d.contains('\0')
                || d.split('/').any(|c| c.is_empty() || c == "." || c == "..")
            {
                return err(
                    "mounts.devices",
                    format!("`{d}` is not a path under /dev (like \"fuse\" or \"net/tun\")"),
                );
            }
            if matches!(
                d.split('/').next(),
                Some("pts" | "ptmx" | "shm" | "console")
            ) || d.starts_with("tty") && d != "tty"
            {
                return err(
                    "mounts.devices",
                    format!("`{d}`: the host's terminals and /dev/pts, /dev/ptmx, /dev/shm never enter a sandbox"),
                );
            }
        }
        if let Some(r) = &self.mounts.root {
            if !r.is_absolute() {
                return err("mounts.root", format!("`{}` is not absolute", r.display()));
            }
        }
        for b in &self.mounts.bind {
            if !b.source.is_absolute() || !b.target.is_absolute() {
                return err(
                    "mounts.bind",
                    format!(
                        "`{}` -> `{}`: source and target must be absolute",
                        b.source.display(),
                        b.target.display()
                    ),
                );
            }
        }
        if let Some(v) = &self.network.veth {
            if !self.namespaces.net {
                return err("network.veth", "needs namespaces.net = true".into());
            }
            if v.name.is_empty() || v.name.len() > 15 || v.name.contains('/') {
                return err(
                    "network.veth.name",
                    format!("`{}` is not an interface name (1 to 15 bytes)", v.name),
                );
            }
            if let Some(h) = &v.host_name {
                if h.is_empty() || h.len() > 15 || h.contains('/') {
                    return err(
                        "network.veth.host_name",
                        format!("`{h}` is not an interface name (1 to 15 bytes)"),
                    );
                }
            }
            for r in &v.routes {
                if let Some(g) = r.gateway {
                    if g.is_ipv4() != v.address.addr.is_ipv4() {
                        return err(
                            "network.veth.routes",
                            format!("gateway {g} is not of the address family of {}", v.address),
                        );
                    }
                }
            }
        }
        let p = &self.cgroup.parent;
        if p.is_empty()
            || p.starts_with('/')
            || p.split('/').any(|c| c.is_empty() || c == "." || c == "..")
        {
            return err(
                "cgroup.parent",
                format!("`{p}` must be a relative path without `.` or `..`"),
            );
        }
        Ok(())
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The key at an error's span: the span itself when it covers a key, else
/// the keys leading to the span on its line (inline tables included),
/// prefixed with the enclosing table.
fn key_at(text: &str, span: Option<std::ops::Range<usize>>) -> Option<String> {
    let s = span?;
    let is_key = |t: &str| {
        t.chars()
            .next()
            .is_some_and(|c| c.is_alphabetic() || c == '_')
            && t.chars()
                .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'))
    };
    let t = text.get(s.clone())?.trim();
    if is_key(t) {
        return Some(t.to_string());
    }
    let pos = s.start.min(text.len());
    let start = text[..pos].rfind('\n').map_or(0, |i| i + 1);
    let prefix = &text[start..pos];
    let mut stack: Vec<String> = Vec::new();
    let mut word = String::new();
    let mut last: Option<String> = None;
    for c in prefix.chars() {
        match c {
            '=' => last = Some(word.trim().to_string()),
            '{' => {
                if let Some(k) = last.take() {
                    stack.push(k);
                }
            }
            '}' => {
                stack.pop();
            }
            ',' => last = None,
            _ => {}
        }
        if c.is_alphanumeric() || matches!(c, '_' | '-' | '.') {
            word.push(c);
        } else if c != ' ' && c != '\t' {
            word.clear();
        }
    }
    stack.extend(last);
    if stack.is_empty() || !stack.iter().all(|k| is_key(k)) {
        return None;
    }
    let table = text[..start].lines().rev().find_map(|l| {
        let l = l.trim();
        l.strip_prefix("[[")
            .and_then(|r| r.split_once("]]"))
            .or_else(|| l.strip_prefix('[').and_then(|r| r.split_once(']')))
            .map(|(h, _)| h.trim().to_string())
    });
    let path = stack.join(".");
    Some(match table {
        Some(t) => format!("{t}.{path}"),
        None => path,
    })
}

/// The line where a dotted key is set: the key inside its `[table]`, else the
/// table header, else the first table of the key's prefix.
fn find_key_line(text: &str, dotted: &str) -> Option<usize> {
    let mut parts: Vec<&str> = dotted.split('.').collect();
    while !parts.is_empty() {
        let (table, key) = parts.split_at(parts.len() - 1);
        let header = table.join(".");
        let mut current = String::new();
        for (i, line) in text.lines().enumerate() {
            let l = line.trim();
            if let Some(h) = l.strip_prefix("[[").and_then(|r| r.split_once("]]")) {
                current = h.0.trim().to_string();
                if current == dotted {
                    return Some(i + 1);
                }
                continue;
            }
            if let Some(h) = l.strip_prefix('[').and_then(|r| r.split_once(']')) {
                current = h.0.trim().to_string();
                if current == dotted {
                    return Some(i + 1);
                }
                continue;
            }
            if current == header {
                if let Some((k, _)) = l.split_once('=') {
                    if k.trim() == key[0] {
                        return Some(i + 1);
                    }
                }
            }
        }
        parts.pop();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_toml_is_default() {
        let text = include_str!("../../configs/default.toml");
        let p = Profile::from_toml(text, Path::new("configs/default.toml")).unwrap();
        assert_eq!(p, Profile::default());
    }

    #[test]
    fn server_toml_parses() {
        let text = include_str!("../../configs/server.toml");
        let p = Profile::from_toml(text, Path::new("configs/server.toml")).unwrap();
        assert!(p.network.veth.is_some());
    }

    #[test]
    fn round_trip() {
        let text = include_str!("../../configs/server.toml");
        let p = Profile::from_toml(text, Path::new("server.toml")).unwrap();
        let again = Profile::from_toml(&p.to_toml(), Path::new("x")).unwrap();
        assert_eq!(p, again);
    }

    #[test]
    fn unknown_key_names_key_file_line() {
        let text = "hostname = \"a\"\n\n[mounts]\ntmp = true\nbogus = 1\n";
        let e = Profile::from_toml(text, Path::new("p.toml")).unwrap_err();
        let s = e.to_string();
        assert!(s.contains("p.toml"), "{s}");
        assert!(s.contains("line 5"), "{s}");
        assert!(s.contains("bogus"), "{s}");
    }

    #[test]
    fn bad_value_names_key_file_line() {
        let text = "[network.veth]\naddress = \"10.1.2.3\"\n";
        let e = Profile::from_toml(text, Path::new("p.toml")).unwrap_err();
        let s = e.to_string();
        assert!(s.contains("line 2"), "{s}");
        assert!(s.contains("address"), "{s}");
        let text = "[process]\nrlimits = { nofile = { soft = -1, hard = 5 } }\n";
        let s = Profile::from_toml(text, Path::new("p.toml"))
            .unwrap_err()
            .to_string();
        assert!(s.contains("line 2") && s.contains("nofile"), "{s}");
        let text = "[process]\ncapabilities = [\"CAP_NOPE\"]\n";
        let s = Profile::from_toml(text, Path::new("p.toml"))
            .unwrap_err()
            .to_string();
        assert!(s.contains("line 2") && s.contains("CAP_NOPE"), "{s}");
    }

    #[test]
    fn cross_key_error_names_key_and_line() {
        let text = "[namespaces]\nnet = false\n\n[network.veth]\naddress = \"10.1.2.3/24\"\n";
        let e = Profile::from_toml(text, Path::new("p.toml")).unwrap_err();
        let s = e.to_string();
        assert!(s.contains("network.veth") && s.contains("line 4"), "{s}");
    }

    #[test]
    fn sizes() {
        assert_eq!("256M".parse::<ByteSize>().unwrap().0, 256 << 20);
        assert_eq!("1g".parse::<ByteSize>().unwrap().0, 1 << 30);
        assert!("12X".parse::<ByteSize>().is_err());
    }
}
