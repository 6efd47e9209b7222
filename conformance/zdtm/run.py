#!/usr/bin/env python3
"""Run CRIU's ZDTM static tests against stasis (or, for comparison, CRIU).

Each test is started the way CRIU's zdtm.py starts it in the `h` flavour (its
Makefile's command line, its environment), inside a fresh stasis sandbox;
then the sandbox is dumped, restored into a fresh sandbox, the test is sent
SIGTERM and its verdict (PASS or FAIL) is read from its output file.

The ZDTM suite is CRIU's code (GPL): it is built outside this repository and
only its path is given here. See README.md beside this file.
"""

import argparse
import concurrent.futures
import glob
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

# Capability numbers -> names (linux/capability.h), for the profile.
CAP_NAMES = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER",
    "CAP_FSETID", "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER",
    "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD",
    "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
]

# zdtm.py asks `criu check --feature F` before running a test that names F.
# Without a criu binary (--criu not given) these answers are used: what a
# CRIU built with the usual Debian packages (no libnftables) reports on a
# recent kernel; a few are checked on this machine below.
def default_features():
    f = {
        "aio_remap": True, "cgroupns": True, "fdinfo_lock": True,
        "get_rseq_conf": True, "ipv6_freebind": True, "link_nsid": True,
        "memfd_hugetlb": True, "mnt_id": True, "move_mount_set_group": True,
        "net_diag_raw": True, "newifindex": True, "ns_pid": True,
        "pagemap_scan_guard_pages": True, "seccomp_filters": True,
        "seccomp_suspend": True, "sk_unix_file": True,
        "sockopt_buf_lock": True, "timens": True, "timerfd": True,
        "tun_ns": True, "tcp_half_closed": True, "kcmp_epoll": True,
        # CRIU is built without libnftables unless libnftables-dev is there.
        "nftables": False, "network_lock_nftables": False,
        "apparmor_stacking": False,
    }
    f["loginuid"] = os.path.exists("/proc/self/loginuid")
    f["tun"] = os.path.exists("/dev/net/tun")
    f["has_ipt_legacy"] = shutil.which("iptables-legacy") is not None
    f["autofs"] = os.path.exists("/dev/autofs") or \
        "autofs" in open("/proc/filesystems").read()
    return f


def now():
    return time.monotonic()


class Suite:
    """The built ZDTM tree: which tests, how each is started."""

    def __init__(self, path):
        path = os.path.abspath(path)
        for cand in (path, os.path.join(path, "test"), os.path.dirname(path)):
            if os.path.isfile(os.path.join(cand, "zdtm.desc")) and \
                    os.path.isdir(os.path.join(cand, "zdtm", "static")):
                self.top = cand  # CRIU's test/ directory
                break
        else:
            sys.exit("%s: not a CRIU test/ (or test/zdtm) directory with "
                     "zdtm.desc and zdtm/static" % path)
        self.static = os.path.join(self.top, "zdtm", "static")
        with open(os.path.join(self.top, "zdtm.desc")) as fd:
            self.desc = eval(fd.read())  # zdtm.py reads it the same way

    def all_static(self):
        excl = {os.path.normpath(os.path.join(self.top, self.desc["dir"], x))
                for x in self.desc["exclude"]}
        names = []
        for f in sorted(os.listdir(self.static)):
            fp = os.path.join(self.static, f)
            st = os.lstat(fp)
            if not (os.path.stat.S_ISREG(st.st_mode) and st.st_mode & 0o100):
                continue
            if f.endswith(".checkskip") or f.endswith(".hook"):
                continue
            if os.path.normpath(fp) in excl:
                continue
            names.append(f)
        return names

    def test_desc(self, name):
        p = os.path.join(self.static, name + ".desc")
        if os.path.exists(p) and os.path.getsize(p) > 0:
            with open(p) as fd:
                return eval(fd.read())
        return {}

    def command(self, name):
        """The test's command line, as its Makefile's `NAME.pid` rule has it."""
        self.cleanout(name)
        out = subprocess.run(
            ["make", "-n", "--no-print-directory", "-C", self.static,
             name + ".pid"], capture_output=True, text=True,
            env=dict(os.environ, MAKEFLAGS=""))
        lines = [l for l in out.stdout.splitlines()
                 if "--pidfile=" in l]
        if out.returncode != 0 or len(lines) != 1:
            return None
        return shlex.split(lines[0])

    def cleanout(self, name):
        subprocess.run(["make", "--no-print-directory", "-C", self.static,
                        name + ".cleanout"], capture_output=True,
                       env=dict(os.environ, MAKEFLAGS=""))

    def checkskip(self, name):
        chs = os.path.join(self.static, name + ".checkskip")
        if os.access(chs, os.X_OK):
            r = subprocess.run([chs], cwd=self.top, capture_output=True)
            return r.returncode != 0
        return False

    def hook_start(self, name, arg, env, logdir, criu=False):
        """Start the test's hook with arg, as zdtm.py does (from CRIU's
        test/ directory). Its output goes to a file: a hook may leave a
        detached child behind (net_lock_*), which would hold a pipe open."""
        h = os.path.join(self.static, name + ".hook")
        if not os.access(h, os.X_OK):
            return None
        with open(h, errors="replace") as fd:
            # Hooks that read CRIU's image files through pycriu check CRIU's
            # image format: they have nothing to say about stasis.
            if "import pycriu" in fd.read() and not criu:
                return None
        with open(os.path.join(logdir, "hook.log"), "a") as log:
            log.write("== %s\n" % arg)
            log.flush()
            return subprocess.Popen([h, arg], cwd=self.top, env=env,
                                    stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=log, start_new_session=True)

    def hook_wait(self, p, arg, logdir, timeout=60):
        if p is None:
            return None
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            return "hook %s: still running after %ds" % (arg, timeout)
        if rc != 0:
            try:
                with open(os.path.join(logdir, "hook.log"),
                          errors="replace") as fd:
                    text = fd.read().split("== %s\n" % arg)[-1]
            except OSError:
                text = ""
            lines = [l.strip() for l in text.splitlines() if l.strip()]
            return "hook %s failed: %s" % (arg, lines[-1] if lines
                                           else "exit %d" % rc)
        return None

    def hook(self, name, arg, env, logdir, criu=False):
        return self.hook_wait(self.hook_start(name, arg, env, logdir, criu),
                              arg, logdir)


def flags(desc):
    return desc.get("flags", "").split()


def select(suite, features, args):
    """(name, desc, skip reason or None) for every static test, in the order
    zdtm.py would take them with `run -a -f h`."""
    arch = os.uname().machine
    only = [re.compile(x) for x in args.only]
    exclude = [re.compile(x) for x in args.exclude]
    rows = []
    for name in suite.all_static():
        d = suite.test_desc(name)
        reason = None
        if d.get("arch", arch) != arch:
            reason = "arch %s" % d["arch"]
        elif "noauto" in flags(d):
            reason = "manual run only (noauto)"
        elif "h" not in d.get("flavor", "h ns uns").split():
            reason = "no h flavour (%s)" % d.get("flavor")
        else:
            for feat in d.get("feature", "").split():
                if not features.get(feat, False):
                    reason = "no %s feature" % feat
                    break
        if reason is None and suite.checkskip(name):
            reason = "checkskip failed"
        if only and not any(r.search(name) for r in only):
            continue
        if any(r.search(name) for r in exclude):
            continue
        rows.append((name, d, reason))
    return rows


def first_line(text, pat=None):
    for l in text.splitlines():
        l = l.strip()
        if l and (pat is None or re.search(pat, l)):
            return l
    return ""


ERR_PAT = r"\bERR\b|FAIL|[Ee]rror|fail|refus|not supported|cannot|can't|Can't"


def out_error(path):
    """The first error line of a test's output file (or its last line)."""
    for p in (path, path + ".inprogress"):
        try:
            with open(p, errors="replace") as fd:
                text = fd.read()
        except OSError:
            continue
        l = first_line(text, r"\bERR\b|FAIL|[Ee]rror")
        if l:
            return re.sub(r"^[0-9:.]+: *[0-9]+: *", "", l)
        lines = [x for x in text.splitlines() if x.strip()]
        if lines:
            return lines[-1].strip()
    return "no output file"


def short(err):
    """An error line without the parts every stasis message shares."""
    err = re.sub(r"^stasis: error: ", "", err)
    err = re.sub(r"^dump of sandbox \S+ failed: ", "", err)
    err = re.sub(r"^restore of \S+ failed; nothing was left behind: ", "", err)
    err = re.sub(r"^the restore closure failed: ", "", err)
    return err


def cause(r):
    """A failure's group: its stage and first error line with the names,
    paths and numbers that differ between tests taken out."""
    e = short(r["error"])
    e = re.sub(r"\b(FAIL|ERR): [\w+.-]+\.c:\d+: ", r"\1: ", e)
    e = re.sub(r"\(errno = \d+ \(([^)]*)\)\)", r"(\1)", e)
    e = re.sub(r"/\S+", "PATH", e)
    e = re.sub(r"0x[0-9a-f]+|\b\d+\b", "N", e)
    e = re.sub(r"socket:\[N\]", "socket", e)
    return "%s: %s" % (r["stage"], e[:110])


def rmtree_cgroup(top):
    for d, subs, _ in os.walk(top, topdown=False):
        try:
            os.rmdir(d)
        except OSError:
            pass


def save(path, text):
    try:
        with open(path, "w") as fd:
            fd.write(text or "")
    except OSError:
        pass


def host_pid(init_pid, ns_pid):
    """The host PID of the process whose PID is ns_pid in init_pid's PID
    namespace."""
    try:
        ns = os.stat("/proc/%d/ns/pid" % init_pid).st_ino
    except OSError:
        return None
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/status" % d) as fd:
                for l in fd:
                    if l.startswith("NSpid:"):
                        v = l.split()[1:]
                        break
                else:
                    continue
            if len(v) >= 2 and int(v[-1]) == ns_pid and \
                    os.stat("/proc/%s/ns/pid" % d).st_ino == ns:
                return int(d)
        except (OSError, ValueError):
            continue
    return None


def tree(pid):
    """pid and its descendants."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            for t in os.listdir("/proc/%d/task" % p):
                with open("/proc/%d/task/%s/children" % (p, t)) as fd:
                    todo += [int(c) for c in fd.read().split()]
        except OSError:
            pass
    return pids


def clean_criu_net_lock():
    """Remove the rules of CRIU's network lock (they match its mark 0xc114)
    that a test leaves in the host's firewall."""
    for tool in ("iptables", "ip6tables", "iptables-legacy",
                 "ip6tables-legacy"):
        if not shutil.which(tool):
            continue
        r = subprocess.run([tool, "-S"], capture_output=True, text=True)
        for l in r.stdout.splitlines():
            if l.startswith("-A ") and "0xc114" in l:
                subprocess.run([tool, "-D"] + shlex.split(l)[1:],
                               capture_output=True)


def kill_hook_daemons(hook):
    """Servers a hook forked and detached (netns_lock_iptables's stays until
    killed)."""
    if not os.path.exists(hook):
        return
    me = str(os.getpid())
    for d in os.listdir("/proc"):
        if not d.isdigit() or d == me:
            continue
        try:
            with open("/proc/%s/cmdline" % d, "rb") as fd:
                argv = fd.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if hook in argv:
            try:
                os.kill(int(d), signal.SIGKILL)
            except OSError:
                pass


def kill_tree(pid):
    """SIGKILL a process and its descendants (a test left on the host)."""
    for p in tree(pid):
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass


def reap(pid):
    """Reap pid if it is a zombie child of the runner (in --criu mode the
    runner is the tests' subreaper)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def wait_gone(pid, timeout):
    """Wait until pid is reaped: CRIU restores only with the PID free."""
    deadline = now() + timeout
    while os.path.exists("/proc/%d" % pid) and now() < deadline:
        reap(pid)
        time.sleep(0.02)


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as fd:
            st = fd.read().rsplit(")", 1)[1].split()[0]
        return st != "Z"
    except OSError:
        return False


class Runner:
    def __init__(self, suite, args):
        self.suite = suite
        self.args = args
        self.work = os.path.abspath(args.work_dir)
        self.state = os.path.abspath(args.state_dir or
                                     os.path.join(self.work, "state"))
        os.makedirs(self.work, exist_ok=True)
        os.makedirs(self.state, exist_ok=True)
        self.tag = "z%d" % os.getpid()
        self.lock = threading.Lock()
        self.launcher = None
        if not args.criu and not args.direct:
            self.launcher = os.path.join(self.work, "launcher")
            src = os.path.join(HERE, "launcher.c")
            r = subprocess.run(["cc", "-O2", "-Wall", "-o", self.launcher,
                                src], capture_output=True, text=True)
            if r.returncode:
                sys.exit("building the launcher: " + r.stderr)
        self.profile = os.path.join(self.work, "profile-%s.toml")
        for suid in (True, False):
            self.write_profile(suid)
        # Tests write NAME.out in the static directory as uid 18943 (zdtm.py
        # adds write permission the same way).
        st = os.stat(suite.static)
        os.chmod(suite.static, st.st_mode | 0o222)

    def bounding_caps(self):
        with open("/proc/self/status") as fd:
            for l in fd:
                if l.startswith("CapBnd:"):
                    mask = int(l.split()[1], 16)
        return [n for i, n in enumerate(CAP_NAMES) if mask >> i & 1]

    def env(self, suid):
        e = {"TMPDIR": "/tmp", "ZDTM_THREAD_BOMB": "5",
             "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:"
                     "/sbin:/bin"}
        if not suid and self.args.test_uid:
            e.update({"ZDTM_UID": "18943", "ZDTM_GID": "58467",
                      "ZDTM_GROUPS": "27495 48244"})
        return e

    def write_profile(self, suid):
        caps = ", ".join('"%s"' % c for c in self.bounding_caps())
        env = "\n".join('%s = "%s"' % kv for kv in self.env(suid).items())
        with open(self.profile % ("suid" if suid else "user"), "w") as fd:
            fd.write("""# ZDTM tests: as root, every capability of the bounding set.
[process]
cwd = "%s"
user = 0
group = 0
groups = []
capabilities = [%s]
no_new_privs = false
%s
[process.env]
%s
""" % (self.suite.static, caps,
       "\n[namespaces]\ncgroup = false\n" if self.args.host_cgroupns else "",
       env))

    def stasis(self, *a, timeout):
        cmd = [self.args.stasis, "--state-dir", self.state] + list(a)
        try:
            r = subprocess.run(cmd, capture_output=True, text=True,
                               timeout=timeout, stdin=subprocess.DEVNULL)
            return r.returncode, r.stdout, r.stderr
        except subprocess.TimeoutExpired as e:
            return None, e.stdout or "", e.stderr or ""

    def ps(self, name):
        rc, out, _ = self.stasis("ps", "--json", timeout=30)
        if rc != 0:
            return None
        try:
            rows = json.loads(out)
        except ValueError:
            return None
        for r in rows:
            if r.get("name") == name:
                return r
        return None

    def run_one(self, name, desc):
        t0 = now()
        res = self._run(name, desc)
        res["name"] = name
        res["seconds"] = round(now() - t0, 1)
        # crfail: the suite expects dump or restore to be refused.
        if "crfail" in flags(desc):
            if res["stage"] in ("dump", "restore") and res["result"] == "FAIL":
                res.update(result="PASS", note="refused as expected (crfail): "
                           + res["error"], error="")
            elif res["result"] == "PASS":
                # zdtm.py calls this a failure ("unexpected success") of
                # CRIU; here the state was restored and the test itself
                # found it intact.
                res["note"] = "crfail test (CRIU refuses it) restored, " \
                    "and the test passed"
        return res

    def _run(self, name, desc):
        a = self.args
        suite = self.suite
        static = suite.static
        suid = "suid" in flags(desc)
        cmd = suite.command(name)
        if not cmd:
            return dict(result="FAIL", stage="start",
                        error="no command line for %s.pid in the Makefile"
                        % name)
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        base = "%s-%s" % (self.tag, safe)
        tdir = os.path.join(self.work, safe)
        shutil.rmtree(tdir, ignore_errors=True)
        os.makedirs(tdir)
        img = os.path.join(tdir, "img")
        pidfile = os.path.join(static, name + ".pid")
        outfile = os.path.join(static, name + ".out")
        henv = dict(os.environ, PATH="/usr/local/sbin:/usr/local/bin:"
                    "/usr/sbin:/usr/bin:/sbin:/bin")
        names = [base + "-a"]
        res = dict(result="FAIL", stage="start", error="")
        post = None
        try:
            if a.criu:
                res = self._run_criu(name, desc, cmd, tdir, pidfile,
                                     outfile, suid, henv)
                return res
            # 1. start
            run = ["run", "-d", "--name", names[0], "--profile",
                   self.profile % ("suid" if suid else "user"), "--"]
            run += ([self.launcher] if self.launcher else []) + cmd
            rc, out, err = self.stasis(*run, timeout=a.timeout)
            if rc != 0:
                res["error"] = "stasis run: " + (first_line(err, ERR_PAT) or
                                                 first_line(err) or str(rc))
                return res
            # zdtm.py runs the --post-start hook while the test starts:
            # some tests wait for it before they write their pidfile.
            post = suite.hook_start(name, "--post-start", henv, tdir)
            deadline = now() + a.timeout
            while not os.path.exists(pidfile):
                if now() > deadline:
                    res["error"] = "no pidfile after %ds: %s" % (
                        a.timeout, out_error(outfile))
                    return res
                r = self.ps(names[0])
                if r is not None and r.get("state") == "exited" and \
                        not os.path.exists(pidfile):
                    time.sleep(0.2)
                    if not os.path.exists(pidfile):
                        e = out_error(outfile)
                        if e == "no output file":
                            # Messages before the output file was set up go
                            # to stderr: the sandbox's log.
                            _, log, _ = self.stasis("logs", names[0],
                                                    timeout=30)
                            e = re.sub(r"^[0-9:.]+: *[0-9]+: *", "",
                                       first_line(log, ERR_PAT) or
                                       first_line(log) or e)
                        res["error"] = "test exited before its pidfile: " + e
                        return res
                time.sleep(0.1)
            time.sleep(0.05)
            with open(pidfile) as fd:
                tpid = int(fd.readline().strip())
            r = self.ps(names[0])
            hp = r and host_pid(r["init_pid"], tpid)
            henv["ZDTM_TEST_PID"] = str(hp or tpid)
            e = suite.hook_wait(post, "--post-start", tdir) or \
                suite.hook(name, "--pre-dump", henv, tdir)
            if e:
                res["error"] = e
                return res
            # 2. dump
            res["stage"] = "dump"
            dargs = ["dump", names[0], "-D", img]
            opts = (desc.get("opts", "") + " " + desc.get("dopts", "")).split()
            if "--tcp-established" in opts:
                dargs.append("--tcp-established")
            t = now()
            rc, out, err = self.stasis(*dargs, timeout=a.timeout)
            res["dump_s"] = round(now() - t, 2)
            save(os.path.join(tdir, "dump.err"), err)
            if rc != 0:
                res["error"] = ("timeout after %ds" % a.timeout
                                if rc is None else
                                first_line(err, ERR_PAT) or first_line(err)
                                or "exit %d" % rc)
                return res
            try:
                os.unlink(pidfile)
            except OSError:
                pass
            e = suite.hook(name, "--pre-restore", henv, tdir)
            if e:
                res["error"] = e
                return res
            # 3. restore
            res["stage"] = "restore"
            names.append(base + "-b")
            t = now()
            rc, out, err = self.stasis("restore", img, "--name", names[1],
                                       "-d", timeout=a.timeout)
            res["restore_s"] = round(now() - t, 2)
            save(os.path.join(tdir, "restore.err"), err)
            if rc != 0:
                res["error"] = ("timeout after %ds" % a.timeout
                                if rc is None else
                                first_line(err, ERR_PAT) or first_line(err)
                                or "exit %d" % rc)
                return res
            r = self.ps(names[1])
            hp = r and host_pid(r["init_pid"], tpid)
            if not hp:
                res["stage"] = "check"
                res["error"] = "test process %d not found after restore: %s" \
                    % (tpid, out_error(outfile))
                return res
            henv["ZDTM_TEST_PID"] = str(hp)
            e = suite.hook(name, "--post-restore", henv, tdir)
            if e:
                res["error"] = e
                return res
            # 4. SIGTERM and verdict
            res["stage"] = "check"
            return self.verdict(hp, outfile, res)
        finally:
            if not a.criu:
                for n in names:
                    self.stasis("rm", "--force", n, timeout=60)
                self.clean_cgroups(names, name)
            else:
                self.clean_cgroups([], name)
                clean_criu_net_lock()
            if post is not None and post.poll() is None:
                post.kill()
                post.wait()
            suite.hook(name, "--clean", henv, tdir, bool(a.criu))
            kill_hook_daemons(os.path.join(static, name + ".hook"))
            if not a.keep:
                # A failed test keeps its stasis messages, not its image.
                shutil.rmtree(tdir if res.get("result") == "PASS" else img,
                              ignore_errors=True)
                for f in (outfile, outfile + ".inprogress"):
                    if res.get("result") != "PASS" and os.path.exists(f):
                        shutil.copy(f, tdir)
                suite.cleanout(name)

    def clean_cgroups(self, names, test):
        """Cgroups stasis leaves behind when a test made its own (and, with
        --host-cgroupns or --criu, the named hierarchy the cgroup tests
        mount)."""
        if self.args.criu:
            # A cgroup test CRIU fails leaves its hierarchies mounted in the
            # host's mount namespace (in NAME.test).
            with open("/proc/self/mountinfo") as fd:
                mnts = [l.split()[4] for l in fd]
            mine = os.path.join(self.suite.static, test + ".")
            for m in reversed(mnts):
                if m.startswith(mine):
                    subprocess.run(["umount", "-l", m], capture_output=True)
        for n in names:
            for top in glob.glob("/sys/fs/cgroup/*/stasis/%s-*" % n):
                rmtree_cgroup(top)
        if self.args.host_cgroupns or self.args.criu:
            # The cgroup tests then make "zdtmtst" cgroups in the host's
            # hierarchies (and a named one) that their hooks clean only in
            # part; a named hierarchy left with cgroups in it would also let
            # the next run's sandboxed tests mount it.
            for top in glob.glob("/sys/fs/cgroup/*/zdtmtst"):
                rmtree_cgroup(top)
        if self.args.criu:
            # CRIU restores the cgroup tests under --cgroup-root /newroot,
            # copying there every cgroup under the test's (the host's root:
            # other sandboxes' cgroups included, as empty copies).
            for top in glob.glob("/sys/fs/cgroup/*/newroot"):
                rmtree_cgroup(top)

            d = tempfile.mkdtemp(prefix="cgclean.", dir=self.work)
            if subprocess.run(["mount", "-t", "cgroup", "none", d, "-o",
                               "none,name=zdtmtst"],
                              capture_output=True).returncode == 0:
                for sub in os.listdir(d):
                    if os.path.isdir(os.path.join(d, sub)):
                        rmtree_cgroup(os.path.join(d, sub))
                subprocess.run(["umount", d], capture_output=True)
            os.rmdir(d)

    def verdict(self, hp, outfile, res):
        try:
            os.kill(hp, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = now() + self.args.timeout
        while alive(hp) and now() < deadline:
            time.sleep(0.05)
        if alive(hp):
            res["error"] = "still running %ds after SIGTERM: %s" % (
                self.args.timeout, out_error(outfile))
            return res
        # The test renames NAME.out.inprogress to NAME.out as it exits.
        for _ in range(20):
            if os.path.exists(outfile):
                break
            time.sleep(0.05)
        try:
            with open(outfile, errors="replace") as fd:
                lines = [l for l in fd.read().splitlines() if l.strip()]
        except OSError:
            lines = []
        if lines and "PASS" in lines[-1].split():
            res.update(result="PASS", error="")
        else:
            res["error"] = out_error(outfile)
        return res

    def _run_criu(self, name, desc, cmd, tdir, pidfile, outfile, suid,
                  henv):
        """The same cycle with a criu binary, run as zdtm.py's `h` flavour
        does: test started on the host, criu dump, criu restore."""
        a = self.args
        res = dict(result="FAIL", stage="start", error="")
        env = dict(os.environ, **self.env(suid))
        # The daemonized test keeps the stdout and stderr it was started
        # with: a file (a pipe would keep a reader waiting, and a dump with an
        # external pipe fails).
        with open(os.path.join(tdir, "test.log"), "w") as log:
            first = subprocess.Popen(cmd, cwd=self.suite.static, env=env,
                                     stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=log)
        post = self.suite.hook_start(name, "--post-start", henv, tdir, True)
        try:
            rc = first.wait(timeout=a.timeout)
        except subprocess.TimeoutExpired:
            rc = None
            self.kill_started(first.pid, cmd)
        e = self.suite.hook_wait(post, "--post-start", tdir)
        if rc != 0 or not os.path.exists(pidfile):
            res["error"] = ("no pidfile after %ds: " % a.timeout
                            if rc is None else
                            "test exited before its pidfile: ") + \
                out_error(outfile)
            return res
        if e:
            res["error"] = e
            return res
        with open(pidfile) as fd:
            tpid = int(fd.readline().strip())
        henv["ZDTM_TEST_PID"] = str(tpid)
        try:
            e = self.suite.hook(name, "--pre-dump", henv, tdir, True)
            if e:
                res["error"] = e
                return res
            img = os.path.join(tdir, "img")
            os.makedirs(img)
            opts = desc.get("opts", "").split()
            res["stage"] = "dump"
            d = [a.criu, "dump", "--no-default-config", "--tree", str(tpid),
                 "--images-dir", img, "--verbosity=4", "--log-file",
                 "dump.log", "--pidfile", pidfile] + opts + \
                desc.get("dopts", "").split() + ["--timeout", "10"]
            pids = tree(tpid)
            rc = self.criu_run(d, tdir)
            if rc != 0:
                res["error"] = self.criu_error(img, "dump.log", rc)
                return res
            for p in pids:
                wait_gone(p, a.timeout)
            try:
                os.unlink(pidfile)
            except OSError:
                pass
            self.suite.hook(name, "--pre-restore", henv, tdir, True)
            res["stage"] = "restore"
            rs = [a.criu, "restore", "--no-default-config", "--images-dir",
                  img, "--verbosity=4", "--log-file", "restore.log",
                  "--pidfile", pidfile] + opts + \
                desc.get("ropts", "").split() + ["--restore-detached"]
            rc = self.criu_run(rs, tdir)
            if rc != 0:
                res["error"] = self.criu_error(img, "restore.log", rc)
                return res
            self.suite.hook(name, "--post-restore", henv, tdir, True)
            res["stage"] = "check"
            return self.verdict(tpid, outfile, res)
        finally:
            kill_tree(tpid)
            wait_gone(tpid, 5)

    @staticmethod
    def kill_started(first, cmd):
        """A test that never wrote its pidfile: its first process and the
        daemon it forked (the runner's child, as its subreaper)."""
        kill_tree(first)
        wait_gone(first, 5)
        me = os.getpid()
        for t in os.listdir("/proc/%d/task" % me):
            try:
                with open("/proc/%d/task/%s/children" % (me, t)) as fd:
                    kids = [int(c) for c in fd.read().split()]
            except OSError:
                continue
            for k in kids:
                try:
                    with open("/proc/%d/cmdline" % k, "rb") as fd:
                        argv0 = fd.read().split(b"\0")[0].decode()
                except OSError:
                    continue
                if argv0 == cmd[0]:
                    kill_tree(k)
                    wait_gone(k, 5)

    def criu_run(self, argv, tdir):
        with open(os.path.join(tdir, "criu.out"), "a") as out:
            p = subprocess.Popen(argv, cwd=self.suite.static,
                                 stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=out)
            try:
                return p.wait(timeout=self.args.timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                return None

    @staticmethod
    def criu_error(img, log, rc):
        if rc is None:
            return "timeout"
        try:
            with open(os.path.join(img, log), errors="replace") as fd:
                # CRIU goes on without raising its own fd limit (that needs
                # CAP_SYS_RESOURCE); the first other error is the cause.
                text = "\n".join(
                    l for l in fd.read().splitlines()
                    if "Can't setup RLIMIT_NOFILE for self" not in l)
                l = first_line(text, r"Error")
                return re.sub(r"^\([0-9. ]+\) *", "", l) or "exit %d" % rc
        except OSError:
            return "exit %d" % rc


def report(results, total, nskipped, elapsed, out):
    """The table, the failures grouped by cause, the count."""
    passed = [r for r in results if r["result"] == "PASS"]
    failed = [r for r in results if r["result"] != "PASS"]
    groups = {}
    for r in failed:
        groups.setdefault(cause(r), []).append(r["name"])
    print("\n%-34s %-6s %-8s %s" % ("test", "result", "stage", "error"),
          file=out)
    for r in results:
        print("%-34s %-6s %-8s %s" % (
            r["name"], r["result"], "" if r["result"] == "PASS"
            else r["stage"], short(r.get("error") or r.get("note", ""))),
            file=out)
    print("\nfailures by first error line:", file=out)
    for k, v in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        print("  %3d  %s\n       %s" % (len(v), k, " ".join(v)), file=out)
    print("\npassed %d of %d (%d skipped) in %.0f s" % (
        len(passed), total, nskipped, elapsed), file=out)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("zdtm", nargs="?",
                   help="CRIU's built test/ directory (or test/zdtm)")
    p.add_argument("--stasis", default=os.path.join(REPO, "target", "release",
                                                    "stasis"),
                   help="stasis binary (default: target/release/stasis)")
    p.add_argument("--criu", help="run the same list with this criu binary "
                   "instead of stasis")
    p.add_argument("--direct", action="store_true",
                   help="start the test as the sandbox's main process, "
                   "without the subreaper launcher (for sandboxes that "
                   "outlive their first process)")
    p.add_argument("-t", "--timeout", type=int, default=60,
                   help="seconds allowed for each step of a test (default 60)")
    p.add_argument("-j", "--parallel", type=int, default=1,
                   help="tests run at once (default 1); tests flagged `excl` "
                   "run alone")
    p.add_argument("--only", action="append", default=[], metavar="REGEX",
                   help="run only tests whose name matches (repeatable)")
    p.add_argument("--exclude", action="append", default=[], metavar="REGEX",
                   help="skip tests whose name matches (repeatable)")
    p.add_argument("--json", metavar="FILE",
                   help="write the results as JSON to FILE (- for stdout)")
    p.add_argument("--list", action="store_true",
                   help="list the tests and skip reasons, run nothing")
    p.add_argument("--work-dir", default="/var/tmp/stasis-zdtm",
                   help="images, logs and the launcher (default "
                   "/var/tmp/stasis-zdtm)")
    p.add_argument("--state-dir", help="stasis state directory (default "
                   "WORK_DIR/state)")
    p.add_argument("--test-uid", action="store_true",
                   help="tests not flagged suid switch to uid 18943 after "
                   "they start, as under zdtm.py (default: they stay root; "
                   "CRIU cannot dump them without CAP_SYS_RESOURCE)")
    p.add_argument("--host-cgroupns", action="store_true",
                   help="sandboxes share the host's cgroup namespace (a "
                   "named cgroup v1 hierarchy can be mounted only there)")
    p.add_argument("--hugepages", type=int, metavar="N",
                   help="reserve N huge pages (vm.nr_hugepages) for the run, "
                   "as CRIU's CI does, and put the old value back after")
    p.add_argument("--keep", action="store_true",
                   help="keep images and test files of every test")
    p.add_argument("--summary", metavar="FILE",
                   help="print the table and failure groups of an earlier "
                   "--json FILE, run nothing")
    args = p.parse_args()
    if args.summary:
        with open(args.summary) as fd:
            doc = json.load(fd)
        report(doc["results"], doc["total"], len(doc["skipped"]),
               doc["seconds"], sys.stdout)
        return 0
    if not args.zdtm:
        p.error("the path of CRIU's built test/ directory is required")

    suite = Suite(args.zdtm)
    features = default_features()
    if args.criu:
        for f in list(features):
            r = subprocess.run([args.criu, "check", "--feature", f],
                               capture_output=True)
            features[f] = r.returncode == 0
    rows = select(suite, features, args)
    torun = [(n, d) for n, d, r in rows if r is None]
    skipped = [(n, r) for n, d, r in rows if r is not None]
    if args.list:
        for n, d, r in rows:
            print("%-40s %s" % (n, r or "run " + " ".join(
                x for x in flags(d) if x in ("suid", "crfail", "excl",
                                             "reqrst"))))
        print("%d to run, %d skipped" % (len(torun), len(skipped)))
        return 0
    if not args.criu and not os.access(args.stasis, os.X_OK):
        sys.exit("%s: no stasis binary (cargo build --release)" % args.stasis)

    runner = Runner(suite, args)
    if args.criu:
        # Daemonized tests become the runner's children, so that it can reap
        # them (a zombie keeps its PID, and CRIU restores only with the PID
        # free).
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)
    old_huge = None
    if args.hugepages is not None:
        with open("/proc/sys/vm/nr_hugepages") as fd:
            old_huge = fd.read().strip()
        with open("/proc/sys/vm/nr_hugepages", "w") as fd:
            fd.write(str(args.hugepages))
    try:
        return run_all(args, runner, torun, skipped)
    finally:
        if old_huge is not None:
            with open("/proc/sys/vm/nr_hugepages", "w") as fd:
                fd.write(old_huge)


def run_all(args, runner, torun, skipped):
    results = []
    t0 = now()
    done = [0]
    total = len(torun)
    out = sys.stderr if args.json == "-" else sys.stdout

    def one(item):
        r = runner.run_one(*item)
        with runner.lock:
            done[0] += 1
            results.append(r)
            print("[%3d/%d] %-34s %s %s%s" % (
                done[0], total, r["name"], r["result"],
                "" if r["result"] == "PASS" else r["stage"] + ": ",
                short(r["error"])[:150]), file=out, flush=True)
        return r

    shared = [x for x in torun if "excl" not in flags(x[1])]
    alone = [x for x in torun if "excl" in flags(x[1])]
    if args.parallel > 1:
        with concurrent.futures.ThreadPoolExecutor(args.parallel) as ex:
            list(ex.map(one, shared))
    else:
        for x in shared:
            one(x)
    for x in alone:
        one(x)
    elapsed = now() - t0

    results.sort(key=lambda r: r["name"])
    report(results, total, len(skipped), elapsed, out)
    failed = [r for r in results if r["result"] != "PASS"]
    passed = [r for r in results if r["result"] == "PASS"]
    if args.json:
        doc = {"tool": "criu" if args.criu else "stasis",
               "binary": args.criu or args.stasis,
               "launcher": runner.launcher is not None,
               "host_cgroupns": args.host_cgroupns,
               "test_uid": args.test_uid,
               "hugepages": args.hugepages, "timeout": args.timeout,
               "passed": len(passed), "total": total,
               "seconds": round(elapsed),
               "results": results,
               "skipped": [{"name": n, "reason": r} for n, r in skipped]}
        if args.json == "-":
            json.dump(doc, sys.stdout, indent=1)
        else:
            with open(args.json, "w") as fd:
                json.dump(doc, fd, indent=1)
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
