#!/usr/bin/env python3
"""stasis benchmark: dump/restore times beside baselines measured in the same run.

Run through bench/run.sh (as root, after `cargo build --release`). Every figure is
the median of --runs runs with its min and max, printed beside a baseline measured
in the same run (interleaved with the stasis runs, so both see the same noise) and
the ratio of the two. Every restored workload checks its own memory and writes a
verdict; a restore whose verdict is not PASS does not count.

Only the Python standard library, gcc, and optionally perf and CRIU (env CRIU).
"""

import argparse
import json
import os
import platform
import select
import shutil
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MIB = 1 << 20


class BenchError(Exception):
    pass


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def kill_group(pid):
    """SIGKILL to process group `pid` (a session leader's tree), or to `pid` alone."""
    for f in (os.killpg, os.kill):
        try:
            f(pid, signal.SIGKILL)
            return
        except ProcessLookupError:
            continue


class Result:
    """What one command did: wall time (s), exit status, output, peak RSS (KiB)."""

    def __init__(self, wall, rc, out, err, maxrss_kib):
        self.wall, self.rc, self.out, self.err, self.maxrss_kib = wall, rc, out, err, maxrss_kib


class Bench:
    def __init__(self, args):
        self.args = args
        self.stasis = os.path.abspath(args.stasis)
        self.criu = os.environ.get("CRIU") or None
        self.work = f"/var/tmp/stasis-bench-{os.getpid()}"
        self.state = os.path.join(self.work, "state")
        self.bin = os.path.join(self.work, "bin")
        self.files = os.path.join(self.work, "files")
        self.mounted = None
        self.sandboxes = set()
        self.outside = {}  # pid -> Popen of workloads started outside stasis (CRIU rows)
        self.criu_pids = set()
        self.samples = {}  # key -> list of floats
        self.errors = []  # (group, message)
        self.counter = 0
        self.cleaned = False
        self.env = dict(os.environ, STASIS_STATE_DIR=self.state)
        self.env.pop("STASIS_LOG", None)

    # ---- set-up and clean-up -------------------------------------------------

    def setup(self):
        for d in (self.work, self.state, self.bin, self.files):
            os.makedirs(d, exist_ok=True)
        os.chmod(self.work, 0o755)
        for prog in ("memwork", "bw", "reaper", "scale"):
            src = os.path.join(HERE, f"{prog}.c")
            out = os.path.join(self.bin, prog)
            r = subprocess.run(["gcc", "-O2", "-Wall", "-pthread", "-o", out, src], capture_output=True, text=True)
            if r.returncode != 0:
                raise BenchError(f"compiling {src}: {r.stderr.strip()}")
        if self.args.images_dir:
            self.images = os.path.join(os.path.abspath(self.args.images_dir), f"stasis-bench-{os.getpid()}")
            os.makedirs(self.images)
        else:
            self.images = os.path.join(self.work, "images")
            os.makedirs(self.images)
            biggest = max(self.sizes()) * MIB
            size = 2 * biggest + (1 << 30)
            r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "stasis-bench", self.images],
                               capture_output=True, text=True)
            if r.returncode != 0:
                raise BenchError(f"mounting a tmpfs at {self.images}: {r.stderr.strip()}")
            self.mounted = self.images
        fstype = subprocess.run(["stat", "-f", "-c", "%T", self.images], capture_output=True, text=True).stdout.strip()
        if fstype != "tmpfs":
            log(f"warning: images dir {self.images} is on {fstype}, not tmpfs")

    def cleanup(self):
        if self.cleaned:
            return
        self.cleaned = True
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        for name in sorted(self.sandboxes):
            subprocess.run([self.stasis, "rm", "--force", name], env=self.env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for pid in list(self.criu_pids):
            kill_group(pid)
        for p, wpid in list(self.outside.values()):
            self.stop_outside(p, wpid)
        if self.mounted:
            if subprocess.run(["umount", self.mounted], stderr=subprocess.DEVNULL).returncode != 0:
                subprocess.run(["umount", "--lazy", self.mounted], stderr=subprocess.DEVNULL)
        elif getattr(self, "images", None):
            shutil.rmtree(self.images, ignore_errors=True)
        shutil.rmtree(self.work, ignore_errors=True)

    def groups(self):
        return set((self.args.only or "large,small,scale,check").split(","))

    def scale_rows(self):
        """(kind, small N, large N) of the scaling rows: 10x between the sizes."""
        k = self.args.scale_factor
        return [(kind, n // 10, n) for kind, n in
                (("areas", 10000 * k), ("threads", 500 * k), ("processes", 100 * k), ("fds", 10000 * k))]

    def sizes(self):
        if "large" not in self.groups():
            return [0]
        s = [256, 1024]
        if self.args.big:
            s.append(4096)
        if self.args.sizes:
            s = [int(x) for x in self.args.sizes.split(",")]
        return s

    def unique(self, tag):
        self.counter += 1
        return f"bench{os.getpid()}-{tag}-{self.counter}"

    # ---- running commands ------------------------------------------------------

    def run(self, cmd, timeout=600.0, env=None):
        """Runs cmd with stdio in files; returns a Result with its wall time, from
        just before the fork to its exit (seen through a pidfd)."""
        tag = self.unique("out")
        out_path = os.path.join(self.files, tag + ".out")
        err_path = os.path.join(self.files, tag + ".err")
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            t0 = time.perf_counter()
            p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env or self.env)
            fd = os.pidfd_open(p.pid)
            try:
                ready, _, _ = select.select([fd], [], [], timeout)
                t1 = time.perf_counter()
                if not ready:
                    raise BenchError(f"{' '.join(cmd)}: no exit within {timeout:.0f} s")
                _, status, ru = os.wait4(p.pid, 0)
                p.returncode = os.waitstatus_to_exitcode(status)
            except BaseException:
                # Timed out or interrupted: the command does not outlive the bench.
                if p.returncode is None:
                    p.kill()
                    os.wait4(p.pid, 0)
                    p.returncode = -9
                raise
            finally:
                os.close(fd)
        with open(out_path, errors="replace") as f:
            o = f.read()
        with open(err_path, errors="replace") as f:
            e = f.read()
        os.unlink(out_path)
        os.unlink(err_path)
        return Result(t1 - t0, p.returncode, o, e, ru.ru_maxrss)

    def must(self, cmd, what, timeout=600.0):
        r = self.run(cmd, timeout)
        if r.rc != 0:
            raise BenchError(f"{what} failed (exit {r.rc}): {(r.err or r.out).strip()[-600:]}")
        return r

    def stasis_cmd(self, *args):
        return [self.stasis, *args]

    @staticmethod
    def wait_file(path, deadline_s, what, alive=None):
        """Waits for `path` to exist (explicit readiness), at most deadline_s;
        `alive`, when given, is checked on the way so a dead workload fails fast."""
        end = time.monotonic() + deadline_s
        delay = 0.0005
        while time.monotonic() < end:
            if os.path.exists(path):
                return
            if alive is not None and not alive():
                raise BenchError(f"{what}: the workload ended before {path} appeared")
            time.sleep(delay)
            delay = min(delay * 2, 0.02)
        raise BenchError(f"{what}: {path} did not appear within {deadline_s:.0f} s")

    def add(self, key, value):
        self.samples.setdefault(key, []).append(value)

    def deadline(self, mib):
        return self.args.timeout + 30.0 * mib / 1024

    # ---- workloads -----------------------------------------------------------------

    def paths(self, tag):
        base = os.path.join(self.files, self.unique(tag))
        return base + ".ready", base + ".verdict"

    def mem_cmd(self, mib, ready, verdict):
        return [os.path.join(self.bin, "memwork"), str(mib), ready, verdict]

    def loop_cmd(self, ready, verdict):
        script = (
            'i=0; trap \'echo "PASS $i iterations" > "$2.tmp"; mv "$2.tmp" "$2"; exit 0\' TERM; '
            'echo ready > "$1.tmp"; mv "$1.tmp" "$1"; '
            "while :; do i=$((i+1)); sleep 0.05; done"
        )
        return ["/bin/sh", "-c", script, "loop", ready, verdict]

    def start_sandbox(self, cmd, ready, mib):
        name = self.unique("sb")
        self.sandboxes.add(name)
        self.must(self.stasis_cmd("run", "-d", "--name", name, "--", *cmd), f"stasis run {name}")
        self.wait_file(ready, self.deadline(mib), f"sandbox {name}")
        return name

    def check_verdict(self, verdict, what, mib):
        self.wait_file(verdict, self.deadline(mib), what)
        with open(verdict) as f:
            v = f.read().strip()
        os.unlink(verdict)
        if not v.startswith("PASS"):
            raise BenchError(f"{what}: verdict {v!r}")
        return v

    def stasis_dump(self, name, img, leave_running=False):
        cmd = ["dump", name, "-D", img, "--json"] + (["--leave-running"] if leave_running else [])
        r = self.must(self.stasis_cmd(*cmd), f"stasis dump {name}")
        st = json.loads(r.out)
        if not leave_running:
            self.wait_ending(name)
        return r, st

    def wait_ending(self, name):
        """A dump returns once its sandbox is killed and removed; the kernel
        then frees the killed workload's memory and a keeper process removes
        its cgroup and the .ending-NAME marker. That time is not the dump's,
        but it must not run into the next measurement either: wait for it."""
        marker = os.path.join(self.state, f".ending-{name}")
        deadline = time.monotonic() + 120
        while os.path.exists(marker):
            if time.monotonic() > deadline:
                raise BenchError(f"sandbox {name} still ending 120 s after its dump ({marker})")
            time.sleep(0.005)

    def stasis_restore(self, img):
        name = self.unique("rs")
        self.sandboxes.add(name)
        r = self.must(self.stasis_cmd("restore", img, "--name", name, "-d", "--json"), f"stasis restore {img}")
        st = json.loads(r.out)
        return name, r, st["stats"]

    def finish_sandbox(self, name, verdict, mib, what):
        self.must(self.stasis_cmd("kill", name), f"stasis kill {name}")
        v = self.check_verdict(verdict, what, mib)
        self.run(self.stasis_cmd("rm", "--force", name))
        self.sandboxes.discard(name)
        return v

    def start_outside(self, cmd, ready, mib):
        """Starts a workload outside stasis, under bench/reaper (its parent and
        subreaper), and returns (reaper Popen, workload PID)."""
        pidfile = self.paths("outside")[0] + ".pid"
        p = subprocess.Popen([os.path.join(self.bin, "reaper"), pidfile, *cmd], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.outside[p.pid] = (p, None)
        alive = lambda: p.poll() is None  # noqa: E731
        self.wait_file(pidfile, self.args.timeout, f"reaper {p.pid}", alive=alive)
        with open(pidfile) as f:
            pid = int(f.read())
        self.outside[p.pid] = (p, pid)
        self.wait_file(ready, self.deadline(mib), f"workload {pid}", alive=alive)
        return p, pid

    def criu_dump_restore(self, cmd, ready, verdict, mib, key):
        """The same workload, started outside stasis, dumped and restored by CRIU."""
        p, wpid = self.start_outside(cmd, ready, mib)
        img = os.path.join(self.images, self.unique("criu"))
        os.makedirs(img)
        try:
            r = self.must([self.criu, "dump", "-t", str(wpid), "-D", img, "--shell-job"], f"criu dump {wpid}")
            # The dump killed the tree: once the reaper has reaped all of it, its PIDs are free again.
            try:
                p.wait(timeout=self.args.timeout)
            except subprocess.TimeoutExpired:
                raise BenchError(f"the tree of workload {wpid} did not end after criu dump") from None
            self.outside.pop(p.pid, None)
            self.add(f"{key}.criu.dump", r.wall)
            pidfile = os.path.join(img, "restored.pid")
            r = self.must([self.criu, "restore", "-D", img, "--shell-job", "-d", "--pidfile", pidfile],
                          f"criu restore {img}")
            with open(pidfile) as f:
                pid = int(f.read().strip())
            self.criu_pids.add(pid)
            self.add(f"{key}.criu.restore", r.wall)
            os.kill(pid, signal.SIGTERM)
            self.check_verdict(verdict, f"CRIU-restored workload {pid}", mib)
            self.criu_pids.discard(pid)
        finally:
            self.stop_outside(p, wpid)
            shutil.rmtree(img, ignore_errors=True)

    def stop_outside(self, p, wpid):
        """Ends a workload started by start_outside (its process group, then its reaper)."""
        if p.poll() is None:
            if wpid:
                kill_group(wpid)
            kill_group(p.pid)
            p.wait()
        self.outside.pop(p.pid, None)

    # ---- the measurements ----------------------------------------------------

    def large(self, mib):
        key = f"mem{mib}"
        # Baselines first, in the same run.
        r = self.must([os.path.join(self.bin, "bw"), "write", os.path.join(self.images, "bw.dat"), str(mib)],
                      "tmpfs write baseline")
        self.add(f"{key}.tmpfs_write", float(r.out.split("=")[1]))
        r = self.must([os.path.join(self.bin, "bw"), "copy", str(mib)], "memory copy baseline")
        for field in r.out.split():
            k, v = field.split("=")
            self.add(f"{key}.copy_{k[:-2]}", float(v))

        ready, verdict = self.paths(key)
        name = self.start_sandbox(self.mem_cmd(mib, ready, verdict), ready, mib)
        img = os.path.join(self.images, self.unique("img"))
        try:
            r, st = self.stasis_dump(name, img)
            self.sandboxes.discard(name)
            self.add(f"{key}.dump.wall", r.wall)
            self.add(f"{key}.dump.rss", r.maxrss_kib / 1024)
            for f in ("freeze_ms", "collect_ms", "memory_ms", "write_ms", "frozen_ms", "total_ms"):
                self.add(f"{key}.dump.{f}", st[f])
            if st["page_bytes"] < mib * MIB:
                raise BenchError(f"dump of {mib} MiB saved only {st['page_bytes']} bytes of pages")
            rname, r, rs = self.stasis_restore(img)
            self.add(f"{key}.restore.wall", r.wall)
            self.add(f"{key}.restore.rss", r.maxrss_kib / 1024)
            for f in ("verify_ms", "sandbox_ms", "fork_ms", "memory_ms", "total_ms"):
                self.add(f"{key}.restore.{f}", rs[f])
            self.finish_sandbox(rname, verdict, mib, f"restored {mib} MiB workload")
            self.add(f"{key}.verified", 1)
        finally:
            shutil.rmtree(img, ignore_errors=True)

        if mib == self.args.leave_running_mib:
            ready, verdict = self.paths(key + "lr")
            name = self.start_sandbox(self.mem_cmd(mib, ready, verdict), ready, mib)
            img = os.path.join(self.images, self.unique("img"))
            try:
                r, st = self.stasis_dump(name, img, leave_running=True)
                self.add(f"{key}.lr.frozen_ms", st["frozen_ms"])
                self.add(f"{key}.lr.live_ms", st.get("live_ms", 0.0))
                self.add(f"{key}.lr.live_faults", st.get("live_faults", 0))
                self.add(f"{key}.lr.wall", r.wall)
                self.finish_sandbox(name, verdict, mib, f"{mib} MiB workload after --leave-running dump")
            finally:
                shutil.rmtree(img, ignore_errors=True)

    def large_criu(self, mib):
        ready, verdict = self.paths(f"criu{mib}")
        self.criu_dump_restore(self.mem_cmd(mib, ready, verdict), ready, verdict, mib, f"mem{mib}")

    def small(self):
        self.add("small.version", self.must(self.stasis_cmd("--version"), "stasis --version").wall)
        self.add("small.true", self.must(["/bin/true"], "/bin/true").wall)
        ready, verdict = self.paths("loop")
        name = self.start_sandbox(self.loop_cmd(ready, verdict), ready, 0)
        img = os.path.join(self.images, self.unique("img"))
        try:
            r, st = self.stasis_dump(name, img)
            self.sandboxes.discard(name)
            self.add("small.dump.wall", r.wall)
            self.add("small.dump.frozen_ms", st["frozen_ms"])
            self.add("small.dump.total_ms", st["total_ms"])
            rname, r, rs = self.stasis_restore(img)
            self.add("small.restore.wall", r.wall)
            self.add("small.restore.total_ms", rs["total_ms"])
            self.finish_sandbox(rname, verdict, 0, "restored shell loop")
        finally:
            shutil.rmtree(img, ignore_errors=True)

    def scale_cmd(self, kind, n, ready, verdict):
        mode = {"processes": "procs"}.get(kind, kind)
        return [os.path.join(self.bin, "scale"), mode, str(n), ready, verdict]

    def scale(self, kind, n):
        """Dump and restore of a workload with n areas, threads, processes or fds."""
        key = f"scale.{kind}.{n}"
        ready, verdict = self.paths(f"{kind}{n}")
        name = self.start_sandbox(self.scale_cmd(kind, n, ready, verdict), ready, 64)
        img = os.path.join(self.images, self.unique("img"))
        try:
            r, st = self.stasis_dump(name, img)
            self.sandboxes.discard(name)
            self.add(f"{key}.dump.wall", r.wall)
            self.add(f"{key}.dump.frozen_ms", st["frozen_ms"])
            rname, r, rs = self.stasis_restore(img)
            self.add(f"{key}.restore.wall", r.wall)
            self.finish_sandbox(rname, verdict, 64, f"restored {kind} {n}")
        finally:
            shutil.rmtree(img, ignore_errors=True)

    def scale_criu(self, kind, n):
        ready, verdict = self.paths(f"criu{kind}{n}")
        self.criu_dump_restore(self.scale_cmd(kind, n, ready, verdict), ready, verdict, 64, f"scale.{kind}.{n}")

    def small_criu(self):
        ready, verdict = self.paths("criuloop")
        self.criu_dump_restore(self.loop_cmd(ready, verdict), ready, verdict, 0, "small")

    def check(self):
        r = self.run(self.stasis_cmd("check"))
        if self.criu:
            self.add("check.criu", self.must([self.criu, "check"], "criu check").wall)
        if r.rc != 0 and "not implemented" in (r.err + r.out):
            self.check_missing = (r.err or r.out).strip()
            return
        if r.rc not in (0, 1):
            raise BenchError(f"stasis check failed (exit {r.rc}): {(r.err or r.out).strip()[-300:]}")
        self.add("check.wall", r.wall)

    def guarded(self, group, fn, *a):
        try:
            fn(*a)
        except BenchError as e:
            log(f"{group}: {e}")
            self.errors.append((group, str(e)))

    def measure(self):
        self.check_missing = None
        n = self.args.runs
        g = self.groups()
        for i in range(n):
            log(f"run {i + 1}/{n}")
            for mib in self.sizes() if "large" in g else []:
                self.guarded(f"{mib} MiB", self.large, mib)
                if self.criu:
                    self.guarded(f"{mib} MiB (CRIU)", self.large_criu, mib)
            if "small" in g:
                self.guarded("small", self.small)
                if self.criu:
                    self.guarded("small (CRIU)", self.small_criu)
            if "scale" in g:
                for kind, lo, hi in self.scale_rows():
                    for size in (lo, hi):
                        self.guarded(f"{kind} {size}", self.scale, kind, size)
                        if self.criu:
                            self.guarded(f"{kind} {size} (CRIU)", self.scale_criu, kind, size)
            if "check" in g:
                self.guarded("check", self.check)

    # ---- perf profiles -------------------------------------------------------------

    def profile(self, outdir):
        """One more dump and restore of the largest size and of the shell loop,
        each under `perf record -g`, with a report of where the time goes."""
        os.makedirs(outdir, exist_ok=True)
        perf = shutil.which("perf")
        if not perf:
            log("perf not found: no profiles")
            return

        def rec(label, cmd):
            data = os.path.join(outdir, f"{label}.data")
            r = self.must([perf, "record", "-q", "-g", "-o", data, "--", *cmd], f"perf record {label}")
            for mode, extra in (("self", ["--no-children"]), ("children", ["--children"])):
                rep = subprocess.run([perf, "report", "-i", data, "--stdio", "-g", "none", "--percent-limit", "1",
                                      "--sort", "comm,dso,sym", *extra], capture_output=True, text=True)
                with open(os.path.join(outdir, f"{label}.{mode}.txt"), "w") as f:
                    f.write(rep.stdout)
            return r

        mib = max(self.sizes())
        runs = [("loop", self.loop_cmd, 0)]
        if mib > 0:
            runs.insert(0, (f"{mib}m", lambda rd, vd: self.mem_cmd(mib, rd, vd), mib))
        for tag, cmdf, m in runs:
            ready, verdict = self.paths("perf" + tag)
            name = self.start_sandbox(cmdf(ready, verdict), ready, m)
            img = os.path.join(self.images, self.unique("img"))
            try:
                rec(f"dump-{tag}", self.stasis_cmd("dump", name, "-D", img))
                self.sandboxes.discard(name)
                rname = self.unique("rs")
                self.sandboxes.add(rname)
                rec(f"restore-{tag}", self.stasis_cmd("restore", img, "--name", rname, "-d"))
                self.finish_sandbox(rname, verdict, m, f"restored workload {tag} (perf)")
            finally:
                shutil.rmtree(img, ignore_errors=True)
        log(f"perf data and reports in {outdir}")

    # ---- the table -------------------------------------------------------------------

    def stat(self, key):
        v = self.samples.get(key)
        if not v:
            return None
        return statistics.median(v), min(v), max(v), len(v)

    def table(self):
        rows = []  # (label, stasis, baseline_label, baseline, ratio, goal, criu, vs_criu)
        gb = 1e9

        def fmt(st, unit, scale=1.0, invert_bytes=None):
            if st is None:
                return "—"
            med, lo, hi, n = st
            if invert_bytes is not None:  # seconds -> GB/s (min/max swap)
                med, lo, hi = invert_bytes / med / gb, invert_bytes / hi / gb, invert_bytes / lo / gb
            else:
                med, lo, hi = med * scale, lo * scale, hi * scale
            d = 3 if unit == "s" else 2 if unit == "GB/s" else 1
            return f"{med:.{d}f} {unit} [{lo:.{d}f}–{hi:.{d}f}]"

        def ratio(a, b, invert=False):
            if a is None or b is None:
                return None
            return (b[0] / a[0]) if invert else (a[0] / b[0])

        def rfmt(x):
            return "—" if x is None else f"{x:.2f}×"

        def goal(x, text, ok):
            if x is None:
                return text + ": —" if text else ""
            return f"{text}: {'met' if ok(x) else 'MISSED'}"

        criu = self.criu is not None
        for mib in self.sizes() if "large" in self.groups() else []:
            k = f"mem{mib}"
            size = f"{mib} MiB" if mib < 1024 else f"{mib // 1024} GiB"
            nbytes = mib * MIB
            if not self.samples.get(f"{k}.dump.wall"):
                rows.append((f"dump+restore {size}", "FAILED (see errors)", "", "", "", "", "", ""))
            dw, tw = self.stat(f"{k}.dump.wall"), self.stat(f"{k}.tmpfs_write")
            cd = self.stat(f"{k}.criu.dump")
            r = ratio(tw, dw)  # throughput ratio = baseline time / stasis time
            rows.append((f"dump {size}: total, CLI wall", fmt(dw, "s"), f"tmpfs write {size}", fmt(tw, "s"),
                         rfmt(ratio(dw, tw)), "", fmt(cd, "s") if criu else "", rfmt(ratio(dw, cd))))
            rows.append((f"dump {size}: throughput", fmt(dw, "GB/s", invert_bytes=nbytes), "tmpfs write",
                         fmt(tw, "GB/s", invert_bytes=nbytes), rfmt(r), goal(r, "≥0.80×", lambda x: x >= 0.8),
                         fmt(cd, "GB/s", invert_bytes=nbytes) if criu else "",
                         rfmt(ratio(cd, dw)) + (" " + goal(ratio(cd, dw), "≥2×", lambda x: x >= 2) if cd else "")))
            fr = self.stat(f"{k}.dump.frozen_ms")
            rows.append((f"dump {size}: frozen (frozen_ms)", fmt(fr, "ms"), "", "", "", "", "", ""))
            ph = [self.stat(f"{k}.dump.{f}_ms") for f in ("freeze", "collect", "memory", "write")]
            if all(ph):
                rows.append((f"dump {size}: phases freeze/collect/memory/write", " / ".join(f"{p[0]:.0f}" for p in ph)
                             + " ms", "", "", "", "", "", ""))
            rw, fc = self.stat(f"{k}.restore.wall"), self.stat(f"{k}.copy_fresh")
            cr = self.stat(f"{k}.criu.restore")
            rows.append((f"restore {size}: total, CLI wall", fmt(rw, "s"), f"copy {size} into fresh memory",
                         fmt(fc, "s"), rfmt(ratio(rw, fc)), goal(ratio(rw, fc), "<1.00×", lambda x: x < 1),
                         fmt(cr, "s") if criu else "", rfmt(ratio(rw, cr))))
            rr = ratio(fc, rw)
            rows.append((f"restore {size}: throughput", fmt(rw, "GB/s", invert_bytes=nbytes), "copy into fresh memory",
                         fmt(fc, "GB/s", invert_bytes=nbytes), rfmt(rr), goal(rr, ">1.00×", lambda x: x > 1),
                         fmt(cr, "GB/s", invert_bytes=nbytes) if criu else "",
                         rfmt(ratio(cr, rw)) + (" " + goal(ratio(cr, rw), "≥1.5×", lambda x: x >= 1.5) if cr else "")))
            ph = [self.stat(f"{k}.restore.{f}_ms") for f in ("verify", "sandbox", "fork", "memory")]
            if all(ph):
                rows.append((f"restore {size}: phases verify/sandbox/fork/memory",
                             " / ".join(f"{p[0]:.0f}" for p in ph) + " ms", "", "", "", "", "", ""))
            pc, wc = self.stat(f"{k}.copy_populate"), self.stat(f"{k}.copy_warm")
            rows.append((f"baselines {size}", "", "copy into memory populated in bulk (MADV_POPULATE_WRITE)",
                         fmt(pc, "GB/s", invert_bytes=nbytes), "", "", "", ""))
            rows.append((f"baselines {size}", "", "memcpy into touched memory", fmt(wc, "GB/s", invert_bytes=nbytes),
                         "", "", "", ""))
            for what in ("dump", "restore"):
                rs = self.stat(f"{k}.{what}.rss")
                rows.append((f"{what} {size}: peak RSS of stasis", fmt(rs, "MiB"), "", "", "",
                             goal(rs[0] if rs else None, "<64 MiB", lambda x: x < 64), "", ""))
            lr = self.stat(f"{k}.lr.frozen_ms")
            if lr:
                rows.append((f"dump --leave-running {size}: frozen", fmt(lr, "ms"), "", "", "",
                             goal(lr[0], "<150 ms", lambda x: x < 150), "", ""))
                lw, ll = self.stat(f"{k}.lr.wall"), self.stat(f"{k}.lr.live_ms")
                rows.append((f"dump --leave-running {size}: total, CLI wall", fmt(lw, "s"), "", "", "", "", "",
                             ""))
                rows.append((f"dump --leave-running {size}: copy after the release (live_ms)", fmt(ll, "ms"), "",
                             "", "", "", "", ""))
        ver, tru = self.stat("small.version"), self.stat("small.true")
        for what, lim in (("dump", 10), ("restore", 30)) if "small" in self.groups() else ():
            w = self.stat(f"small.{what}.wall")
            c = self.stat(f"small.criu.{what}")
            rows.append((f"{what} shell loop: CLI start to exit", fmt(w, "ms", 1000), "stasis --version",
                         fmt(ver, "ms", 1000), rfmt(ratio(w, ver)),
                         goal(w[0] * 1000 if w else None, f"<{lim} ms", lambda x, lim=lim: x < lim),
                         fmt(c, "ms", 1000) if criu else "", rfmt(ratio(w, c))))
        if "small" in self.groups():
            rows.append(("", "", "/bin/true", fmt(tru, "ms", 1000), "", "", "", ""))
        if "scale" in self.groups():
            for kind, lo, hi in self.scale_rows():
                for what in ("dump", "restore"):
                    a, b = self.stat(f"scale.{kind}.{lo}.{what}.wall"), self.stat(f"scale.{kind}.{hi}.{what}.wall")
                    ca, cb = self.stat(f"scale.{kind}.{lo}.criu.{what}"), self.stat(f"scale.{kind}.{hi}.criu.{what}")
                    g = ratio(b, a)
                    rows.append((f"{what} {hi:,} {kind}: CLI wall", fmt(b, "ms", 1000), f"{what} {lo:,} {kind}",
                                 fmt(a, "ms", 1000), rfmt(g),
                                 goal(g, "≤15× for 10× (linear)", lambda x: x <= 15),
                                 fmt(cb, "ms", 1000) if criu else "", rfmt(ratio(b, cb))))
                    if criu:
                        rows.append((f"{what} {lo:,} {kind}: CLI wall", fmt(a, "ms", 1000), "", "", "", "",
                                     fmt(ca, "ms", 1000), rfmt(ratio(a, ca))))
        if "check" not in self.groups():
            return rows
        if self.check_missing:
            cc = self.stat("check.criu")
            rows.append(("stasis check: CLI start to exit", "NOT AVAILABLE (" + self.check_missing.splitlines()[-1][:70]
                         + ")", "stasis --version", fmt(ver, "ms", 1000), "—", "", fmt(cc, "ms", 1000) if criu else "",
                         "—"))
        else:
            cw, cc = self.stat("check.wall"), self.stat("check.criu")
            rows.append(("stasis check: CLI start to exit", fmt(cw, "ms", 1000), "stasis --version",
                         fmt(ver, "ms", 1000), rfmt(ratio(cw, ver)), "", fmt(cc, "ms", 1000) if criu else "",
                         rfmt(ratio(cw, cc))))
        return rows

    def report(self):
        head = ["row", "stasis: median [min–max]", "baseline (same run)", "baseline: median [min–max]",
                "stasis/baseline", "goal (issue 6)"]
        if self.criu:
            head += ["CRIU: median [min–max]", "stasis/CRIU"]
        rows = [r[: len(head)] for r in self.table()]
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        lines += ["| " + " | ".join(c for c in r) + " |" for r in rows]
        return "\n".join(lines)


def machine():
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / (1 << 20):.1f} GiB"
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            thp = f.read().strip()
    except OSError:
        thp = "?"
    return (f"nproc {os.cpu_count()}, memory {mem}, kernel {platform.release()}, CPU {cpu}, "
            f"THP {thp}, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stasis", required=True, help="the stasis binary (release build)")
    ap.add_argument("--runs", type=int, default=int(os.environ.get("RUNS", "3")), help="runs per row (env RUNS, 3)")
    ap.add_argument("--big", action="store_true", help="add the 4 GiB workload (long)")
    ap.add_argument("--sizes", help="memory sizes in MiB, comma-separated (overrides the default 256,1024)")
    ap.add_argument("--only", help="groups to run, comma-separated: large, small, scale, check (default: all)")
    ap.add_argument("--scale-factor", type=int, default=1,
                    help="multiplies the scaling rows' sizes (default 1: 10,000 areas, 500 threads, "
                         "100 processes, 10,000 fds, each beside a tenth of it)")
    ap.add_argument("--leave-running-mib", type=int, default=1024,
                    help="size of the --leave-running dump row (0: none)")
    ap.add_argument("--images-dir", help="put images under this (tmpfs) directory instead of a tmpfs mounted here")
    ap.add_argument("--timeout", type=float, default=60.0, help="readiness/verdict deadline in s (plus 30 s per GiB)")
    ap.add_argument("--perf", metavar="DIR", help="also record one dump and restore under `perf record -g` into DIR")
    ap.add_argument("--json", metavar="FILE", help="write every sample to FILE")
    args = ap.parse_args()
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    if os.geteuid() != 0:
        sys.exit("bench: must run as root")

    b = Bench(args)

    def stop(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)
    t0 = time.monotonic()
    try:
        b.setup()
        ver = subprocess.run([b.stasis, "--version"], capture_output=True, text=True).stdout.strip()
        print(f"# stasis benchmark — {ver} ({b.stasis})")
        print(f"machine: {machine()}")
        print(f"images: {b.images} (tmpfs); runs per row: {args.runs}; groups: {','.join(sorted(b.groups()))}"
              + (f"; sizes: {', '.join(str(s) + ' MiB' for s in b.sizes())}" if "large" in b.groups() else ""))
        print("CRIU: " + (b.criu if b.criu else "not given (set CRIU=/path/to/criu for the side-by-side columns)"))
        sys.stdout.flush()
        b.measure()
        if args.perf:
            b.guarded("perf", b.profile, os.path.abspath(args.perf))
    except KeyboardInterrupt as e:
        b.cleanup()
        sys.exit(f"bench: interrupted ({e or 'SIGINT'}); sandboxes, images and {b.work} removed")
    except BenchError as e:
        b.cleanup()
        sys.exit(f"bench: {e}")
    finally:
        b.cleanup()
    print()
    print(b.report())
    print()
    print("GB/s = 10^9 bytes/s of the nominal size (1 GiB = 1,073,741,824 bytes); wall times run from the fork of the")
    print("command to its exit; every restored workload checked all its pages and wrote PASS before a run counted;")
    print("phases and frozen time are stasis's own figures (--json); peak RSS is ru_maxrss of the stasis process.")
    if b.errors:
        print("\nerrors (those runs do not count):")
        for g, e in b.errors:
            print(f"- {g}: {e}")
    print(f"\nload average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"bench took {time.monotonic() - t0:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "samples": b.samples, "errors": b.errors}, f, indent=1)
    return 1 if b.errors else 0


if __name__ == "__main__":
    sys.exit(main())
