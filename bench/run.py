#!/usr/bin/env python3
"""gpufleet benchmark: the real tool on the local Docker lab, and a synthetic 1,000-host inventory.

    .venv/bin/python bench/run.py [--sizes 1,4,8] [--out bench/results/latest.json]

For each size N (default 1, 4, 8) a lab of its own (prefix `gpufleet-bench`, subnet
10.77.40.0/24, files under /var/tmp/gpufleet-bench) is brought up or grown to N servers,
`bootstrap` converges gpu1..gpuN once (timed, but not a figure), then these are timed:
the converged re-run of `bootstrap` on gpu1..gpuN, `sync-keys` (every host, bastion
included) and `gen-ssh-config`, each --reps times (median and min).  SSH connections and
remote commands per host come from the tool's own `--json` recap (max over hosts and
repetitions); peak RSS of each fab process from GNU time (`/usr/bin/time -f %M`), or by
polling VmHWM in /proc/PID/status where GNU time is missing.  Every fab invocation is a
whole process (`python -m fabric -r REPO ...`), so its time includes Python start-up.

During the converged re-runs the lab containers' cgroups give the server-side CPU per host
(each server with its dockerd and the containers inside it).  After the sizes, gpu1 and gpu2 are
replaced by bare servers and their first `bootstrap` is timed (the apt cache warm), with the
round trips (remote commands + SSH connections) per host.

Then, without a lab: an inventory of 1,000 GPU servers behind a bastion with 2,000
containers, generated in a temp dir: `gen-ssh-config`, `show-host host0500` and
`gpufleet.inventory.load`, each timed as a whole CLI process and in-process.

The lab is torn down at the end (`Lab.down()`, the apt cache volume is kept for the next
run), also on failure, Ctrl-C and SIGTERM; `--keep-lab` leaves it up.  Output: a rich
table, the JSON document (--out), the fab outputs and per-run logs under the work dir,
and with `--readme` the figures block of bench/README.md.
"""
from __future__ import annotations

import argparse
import compileall
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from rich.text import Text  # noqa: E402

PREFIX = "gpufleet-bench"
SUBNET = "10.77.40.0/24"
WORKDIR = Path("/var/tmp/gpufleet-bench")
GNU_TIME = "/usr/bin/time"
README = REPO / "bench" / "README.md"
FIGURES_BEGIN = "<!-- bench figures: begin (bench/run.py --readme rewrites this block) -->"
FIGURES_END = "<!-- bench figures: end -->"

# Targets
MAX_CONNECTIONS = 1          # SSH connections per host, converged bootstrap re-run
MAX_COMMANDS = 3             # remote commands per host, converged bootstrap re-run
MAX_SCALING = 1.5            # converged bootstrap median, N=8 over N=1
MAX_LOCAL_SECONDS = 1.0      # gen-ssh-config / show-host / validation of 1,000 hosts
MAX_RSS_MB = 150             # peak RSS of fab at N=8
MAX_FIRST_BOOTSTRAP = 100.0  # seconds: first bootstrap of two bare servers, apt cache warm
MAX_CONVERGED_ONE = 0.8      # seconds: converged bootstrap re-run of one host, whole fab process
MAX_SERVER_CPU = 0.25        # CPU-s on the server side per converged host (its cgroup, dockerd, inner containers)
SYNTH_SERVERS, SYNTH_CONTAINERS_PER_HOST = 1000, 2

console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)


class Interrupted(BaseException):
    """SIGTERM/SIGHUP: unwind like Ctrl-C so that the lab is torn down."""


def _on_signal(signum, _frame):
    raise Interrupted(f"signal {signal.Signals(signum).name}")


def say(message: str, style: str = "") -> None:
    """One progress line; the message is plain text (tool output may contain `[...]`)."""
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] ", Text(message, style=style), sep="")


# --- the machine ---

def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def uptime_line() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average: " + ", ".join(f"{x:.2f}" for x in loadavg())


def machine() -> dict:
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
    total_kb = int(meminfo["MemTotal"].split()[0])

    def out(argv):
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (p.stdout or p.stderr).strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    info = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "nproc": out(["nproc"]) or str(os.cpu_count()),
        "memory_gib": round(total_kb / 2**20, 1),
        "cpu": next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name")), platform.processor()),
        "kernel": platform.release(),
        "python3": out(["python3", "--version"]),
        "venv_python": platform.python_version(),
        "docker": out(["docker", "version", "--format", "{{.Server.Version}}"]),
        "git_commit": out(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),  # read-only
        "uptime_at_start": uptime_line(),
    }
    return info


def ensure_gnu_time() -> bool:
    """GNU time for the peak RSS; installed with apt when missing and we are root."""
    def works():
        return os.access(GNU_TIME, os.X_OK) and subprocess.run(
            [GNU_TIME, "-f", "%M", "true"], capture_output=True).returncode == 0
    if works():
        return True
    if os.geteuid() == 0 and shutil.which("apt-get"):
        say("installing GNU time (apt package `time`) for peak RSS")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "install", "-y", "-q", "time"], env=env, capture_output=True)
        if not works():
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
            subprocess.run(["apt-get", "install", "-y", "-q", "time"], env=env, capture_output=True)
    if works():
        return True
    say("GNU time unavailable: peak RSS by polling VmHWM in /proc/PID/status", "yellow")
    return False


# --- running fab ---

@dataclass
class FabRun:
    label: str
    argv: list[str]
    rc: int
    seconds: float
    peak_rss_mb: float | None
    output: str                          # file with the process's stdout+stderr
    recap: dict | None = None            # the --json document
    log_dir: str | None = None           # .gpufleet/logs/<run> of this invocation
    cpu_seconds: float | None = None     # user + system CPU of the fab process (GNU time)
    cpu: dict | None = None              # CPU seconds spent machine-wide / by the bench lab meanwhile

    def hosts(self) -> list[dict]:
        return (self.recap or {}).get("hosts", [])

    def max_of(self, key: str) -> int | None:
        values = [h.get(key) for h in self.hosts() if h.get(key) is not None]
        return max(values) if values else None

    def sum_of(self, key: str) -> int:
        return sum(h.get(key) or 0 for h in self.hosts())


class Runner:
    """Runs whole processes (fab or python) under GNU time, or polling VmHWM."""

    def __init__(self, workdir: Path, use_gnu_time: bool):
        self.workdir = workdir
        self.outputs = workdir / "outputs"
        self.outputs.mkdir(parents=True, exist_ok=True)
        self.use_gnu_time = use_gnu_time
        self.count = 0
        self.meter: CpuMeter | None = None

    def process(self, label: str, argv: list[str], cwd: Path, env: dict | None = None,
                timeout: float = 1800) -> FabRun:
        self.count += 1
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", label)
        out_path = self.outputs / f"{self.count:03d}-{slug}.out"
        rss_path = self.outputs / f"{self.count:03d}-{slug}.rss"
        full_env = dict(os.environ, **(env or {}))
        full_env.setdefault("COLUMNS", "160")
        wrapped = [GNU_TIME, "-f", "%M %U %S", "-o", str(rss_path), *argv] if self.use_gnu_time else argv
        before = self.meter.snapshot() if self.meter else None
        with open(out_path, "wb") as out:
            started = time.perf_counter()
            proc = subprocess.Popen(wrapped, cwd=cwd, env=full_env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
            hwm = [0]
            poller = None
            if not self.use_gnu_time:
                poller = threading.Thread(target=_poll_hwm, args=(proc, hwm), daemon=True)
                poller.start()
            try:
                rc = proc.wait(timeout=timeout)
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            seconds = time.perf_counter() - started
            if poller:
                poller.join()
        cpu = self.meter.delta(before, self.meter.snapshot(), seconds) if self.meter else None
        rss_mb, cpu_seconds = None, None
        if self.use_gnu_time:
            try:
                m = re.search(r"^(\d+) ([0-9.]+) ([0-9.]+)$", rss_path.read_text(), re.MULTILINE)
                if m:
                    rss_mb, cpu_seconds = int(m.group(1)) / 1024, float(m.group(2)) + float(m.group(3))
            except OSError:
                pass
        elif hwm[0]:
            rss_mb = hwm[0] / 1024
        if cpu is not None and cpu_seconds is not None:
            cpu["fab"] = round(cpu_seconds, 2)
            cpu["others"] = round(max(0.0, cpu["machine_busy"] - cpu["bench_lab"] - cpu_seconds), 2)
        return FabRun(label, argv, rc, seconds, rss_mb, str(out_path), cpu_seconds=cpu_seconds, cpu=cpu)

    def fab(self, label: str, args: list[str], cwd: Path, inventory: Path, json_out: bool = False) -> FabRun:
        json_path = None
        if json_out:
            json_path = self.outputs / f"{self.count + 1:03d}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', label)}.json"
            args = [*args, "--json", str(json_path)]
        logs = cwd / ".gpufleet" / "logs"
        before = set(os.listdir(logs)) if logs.is_dir() else set()
        run = self.process(label, [sys.executable, "-m", "fabric", "-r", str(REPO), *args], cwd,
                           env={"FABRIC_INVENTORY": str(inventory)})
        if json_path and json_path.exists():
            run.recap = json.loads(json_path.read_text())
        new = sorted(set(os.listdir(logs)) - before) if logs.is_dir() else []
        run.log_dir = str(logs / new[-1]) if new else None
        return run


def _poll_hwm(proc, hwm):
    status = Path(f"/proc/{proc.pid}/status")
    while proc.poll() is None:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    hwm[0] = max(hwm[0], int(line.split()[1]))
        except (OSError, ValueError):
            pass
        time.sleep(0.005)


class CpuMeter:
    """CPU seconds used machine-wide (/proc/stat) and by the bench lab's containers (their cgroups),
    per lab member: a server's own cgroup (its dockerd, containerd, sshd and the docker CLI calls are
    in it) plus the cgroups of the containers inside it (with cgroupfs those sit beside the servers')."""

    def __init__(self, members: dict[str, list[str]]):
        self.hz = os.sysconf("SC_CLK_TCK")
        self.ncpu = os.cpu_count() or 1
        self.members = {name: [p for p in (self._usage_path(i) for i in ids) if p] for name, ids in members.items()}
        self.paths = [p for paths in self.members.values() for p in paths]
        self.missing = sum(len(ids) for ids in members.values()) - len(self.paths)
        self.servers = sorted((n for n in members if re.fullmatch(r"gpu\d+", n)), key=lambda n: int(n[3:]))

    @staticmethod
    def _usage_path(cid: str) -> Path | None:
        for candidate in (Path(f"/sys/fs/cgroup/cpuacct/docker/{cid}/cpuacct.usage"),
                          Path(f"/sys/fs/cgroup/cpu,cpuacct/docker/{cid}/cpuacct.usage"),
                          Path(f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/cpu.stat"),
                          Path(f"/sys/fs/cgroup/docker/{cid}/cpu.stat")):
            if candidate.exists():
                return candidate
        return None

    @staticmethod
    def _read(path: Path) -> float:
        try:
            text = path.read_text()
        except OSError:
            return 0.0  # a container went away
        if path.name == "cpuacct.usage":
            return int(text) / 1e9
        return int(re.search(r"usage_usec (\d+)", text).group(1)) / 1e6

    def snapshot(self) -> dict:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        members = {name: sum(self._read(p) for p in paths) for name, paths in self.members.items()}
        return {"busy": (sum(fields[:8]) - idle) / self.hz, "lab": sum(members.values()), "members": members}

    def delta(self, a: dict, b: dict, wall: float) -> dict:
        servers = {n: round(b["members"][n] - a["members"][n], 3) for n in self.servers}
        return {"machine_busy": round(b["busy"] - a["busy"], 2), "machine_capacity": round(wall * self.ncpu, 2),
                "bench_lab": round(b["lab"] - a["lab"], 2), "servers": servers,
                "server_total": round(sum(servers.values()), 3),
                "others_in_lab": {n: round(b["members"][n] - a["members"][n], 3)
                                  for n in self.members if n not in servers}}


def bench_members(lab) -> dict[str, list[str]]:
    """Container ids of each bench lab member: its own container, and for a server every container inside it."""
    members: dict[str, list[str]] = {}
    for container in lab._containers():
        name = container.labels.get("gpufleet.lab.name", "") or container.name
        ids = members.setdefault(name, [])
        ids.append(container.id)
        if container.labels.get("gpufleet.lab.role", "").startswith("server"):
            code, out = lab.exec(name, ["docker", "ps", "-q", "--no-trunc"])
            if code == 0:
                ids += out.split()
    return members


def stats(values: list[float]) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3), "n": len(values)}


# --- per-host logs: where a run's time goes ---

_CMD = re.compile(r"^\$ (.*)$")
_EXIT = re.compile(r"^# exit (-?\d+) in ([0-9.]+)s$")


def log_breakdown(log_dir: str | None) -> dict:
    """Per host log: commands, connections, seconds spent in remote commands, slowest commands."""
    if not log_dir or not Path(log_dir).is_dir():
        return {}
    out = {}
    for path in sorted(Path(log_dir).glob("*.log")):
        commands, connections, remote, slow, current = 0, 0, 0.0, [], None
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("# connected"):
                connections += 1
            m = _CMD.match(line)
            if m:
                commands += 1
                current = m.group(1)
                continue
            m = _EXIT.match(line)
            if m and current is not None:
                seconds = float(m.group(2))
                remote += seconds
                slow.append((seconds, current[:110]))
                current = None
        slow.sort(reverse=True)
        out[path.stem] = {"commands": commands, "connections": connections, "remote_seconds": round(remote, 2),
                          "slowest": [{"seconds": s, "command": c} for s, c in slow[:3]]}
    return out


# --- the lab part ---

def lab_sizes(args, runner: Runner, results: dict) -> None:
    from lab.topology import Lab

    lab_dir = args.workdir / "lab"
    cwd = args.workdir / "cwd"
    cwd.mkdir(parents=True, exist_ok=True)
    prefix, subnet = args.lab
    lab = Lab(lab_dir, prefix=prefix, subnet=subnet, log=lambda m: say(f"  lab: {m}"))
    results["lab"] = {"prefix": prefix, "subnet": subnet, "directory": str(lab_dir), "cwd": str(cwd), "sizes": []}
    try:
        for n in args.sizes:
            say(f"N={n}: lab.up(hosts={n})", "bold")
            load_before = loadavg()
            info = lab.up(hosts=n)
            say(f"  lab up in {info.seconds:.1f}s ({', '.join(info.servers)})")
            size = {"n": n, "lab_up_seconds": round(info.seconds, 1), "built_images": info.built_images,
                    "load_before": load_before}
            results["lab"]["sizes"].append(size)
            hosts = ",".join(info.servers)
            inv = info.inventory

            converge = []
            for attempt in range(2):
                run = runner.fab(f"N{n}-converge{attempt + 1}", ["-H", hosts, "bootstrap"], cwd, inv, json_out=True)
                converge.append(run)
                say(f"  converge bootstrap #{attempt + 1}: rc={run.rc} {run.seconds:.1f}s, "
                    f"changed={run.sum_of('changed')} failed={run.sum_of('failed')}")
                if run.rc == 0:
                    break
            size["converge"] = [summary(r) for r in converge]
            size["converged"] = converge[-1].rc == 0

            runner.meter = CpuMeter(bench_members(lab))
            idle = runner.meter.snapshot()
            time.sleep(args.idle_seconds)
            size["idle"] = runner.meter.delta(idle, runner.meter.snapshot(), args.idle_seconds)
            size["idle"]["seconds"] = args.idle_seconds
            size["cgroups_metered"], size["cgroups_missing"] = len(runner.meter.paths), runner.meter.missing
            say(f"  idle {args.idle_seconds:.0f}s: machine busy {size['idle']['machine_busy']:.1f} of "
                f"{size['idle']['machine_capacity']:.0f} CPU-s, bench lab {size['idle']['bench_lab']:.1f} CPU-s "
                f"({len(runner.meter.paths)} cgroups)")

            reruns = []
            for rep in range(args.reps):
                run = runner.fab(f"N{n}-bootstrap-rerun{rep + 1}", ["-H", hosts, "bootstrap"], cwd, inv, json_out=True)
                reruns.append(run)
                say(f"  bootstrap re-run #{rep + 1}: rc={run.rc} {run.seconds:.2f}s, changed={run.sum_of('changed')}, "
                    f"max conns/host={run.max_of('ssh_connections')}, max cmds/host={run.max_of('remote_commands')}, "
                    f"RSS={fmt(run.peak_rss_mb, '.0f')} MB; CPU-s: {cpu_line(run)}")
            size["bootstrap_rerun"] = group(reruns)
            size["bootstrap_rerun"]["server_cpu"] = server_cpu(reruns, n, size["idle"])
            say(f"  server-side CPU per converged host (server cgroup, its dockerd and inner containers): "
                f"{fmt(size['bootstrap_rerun']['server_cpu'].get('per_host_median'), '.3f')} CPU-s per run "
                f"(idle rate {fmt(size['bootstrap_rerun']['server_cpu'].get('idle_per_host_per_second'), '.3f')} "
                f"CPU-s/s per server)")
            size["bootstrap_rerun"]["logs"] = {r.label: log_breakdown(r.log_dir) for r in reruns}
            size["bootstrap_rerun"]["probe_seconds"] = probe_stats(size["bootstrap_rerun"]["logs"])

            if n == max(args.sizes) and n > 1:
                # Diagnostic: the same re-run one host at a time ([run] parallel = 1).
                serial_inv = args.workdir / "hosts-parallel1.toml"
                serial_inv.write_text(re.sub(r"(?m)^parallel = \d+", "parallel = 1", inv.read_text()))
                run = runner.fab(f"N{n}-bootstrap-rerun-parallel1", ["-H", hosts, "bootstrap"], cwd, serial_inv,
                                 json_out=True)
                size["bootstrap_rerun_parallel1"] = summary(run) | {
                    "logs": log_breakdown(run.log_dir), "probe_seconds": probe_stats({run.label: log_breakdown(run.log_dir)})}
                say(f"  diagnostic, parallel=1: rc={run.rc} {run.seconds:.2f}s; probe per host "
                    f"{size['bootstrap_rerun_parallel1']['probe_seconds']}; CPU-s: {cpu_line(run)}")

            syncs = []
            for rep in range(args.reps):
                run = runner.fab(f"N{n}-sync-keys{rep + 1}", ["sync-keys"], cwd, inv, json_out=True)
                syncs.append(run)
                say(f"  sync-keys #{rep + 1}: rc={run.rc} {run.seconds:.2f}s, changed={run.sum_of('changed')}, "
                    f"max cmds/host={run.max_of('remote_commands')}; CPU-s: {cpu_line(run)}")
            size["sync_keys"] = group(syncs)

            first = runner.fab(f"N{n}-gen-ssh-config-write", ["gen-ssh-config"], cwd, inv)
            gens = [runner.fab(f"N{n}-gen-ssh-config{rep + 1}", ["gen-ssh-config"], cwd, inv)
                    for rep in range(args.reps)]
            say(f"  gen-ssh-config: first rc={first.rc} {first.seconds:.2f}s; unchanged median "
                f"{statistics.median(r.seconds for r in gens):.2f}s; CPU-s: {cpu_line(gens[-1])}")
            size["gen_ssh_config_first"] = summary(first)
            size["gen_ssh_config"] = group(gens)
            if args.ansible:
                size["ansible"] = ansible_side_by_side(args, runner, info.servers, inv, lab_dir / "ssh_config", n)

            every = converge + reruns + syncs + [first] + gens
            size["peak_rss_mb"] = {"any_fab": maxn(r.peak_rss_mb for r in every),
                                   "converge": maxn(r.peak_rss_mb for r in converge),
                                   "bootstrap_rerun": maxn(r.peak_rss_mb for r in reruns),
                                   "sync_keys": maxn(r.peak_rss_mb for r in syncs),
                                   "gen_ssh_config": maxn(r.peak_rss_mb for r in [first] + gens)}
            size["load_after"] = loadavg()
            size["uptime_after"] = uptime_line()
            runner.meter = None
            say(f"  {size['uptime_after']}")
        if not args.no_first_bootstrap:
            first_bootstrap(args, runner, results, lab, cwd)
    finally:
        if args.keep_lab:
            say(f"--keep-lab: lab {prefix} left up ({lab_dir})")
        else:
            say(f"tearing down lab {prefix}")
            # A second Ctrl-C must not leave the lab half up: ignore it while we clean.
            old = signal.signal(signal.SIGINT, signal.SIG_IGN)
            try:
                removed = lab.down()
                results["lab"]["torn_down"] = len(removed)
                say(f"  removed {len(removed)} objects (the apt cache volume {prefix}-aptcache is kept)")
            except Exception as e:  # report, but do not hide the original error
                results["lab"]["teardown_error"] = f"{type(e).__name__}: {e}"
                say(f"teardown failed: {e}", "red")
            finally:
                signal.signal(signal.SIGINT, old)


ANSIBLE_CORE = "ansible-core>=2.16,<2.18"
ANSIBLE_PLAYBOOK = REPO / "bench" / "ansible" / "converged.yml"


def ansible_playbook(workdir: Path) -> Path | None:
    """ansible-playbook from a venv of its own under the workdir (pip install ansible-core), or None."""
    venv = workdir / "ansible-venv"
    exe = venv / "bin" / "ansible-playbook"
    if not exe.exists():
        say(f"installing {ANSIBLE_CORE} into {venv} for the side-by-side")
        made = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
        installed = made.returncode == 0 and subprocess.run(
            [str(venv / "bin" / "pip"), "install", "-q", ANSIBLE_CORE], capture_output=True, text=True).returncode == 0
        if not installed:
            say("  could not install ansible-core: no side-by-side", "yellow")
            return None
    return exe


def ansible_side_by_side(args, runner: Runner, servers: list[str], inventory: Path, ssh_config: Path,
                         n: int) -> dict:
    """The playbook in bench/ansible/ on the same converged servers, through the ssh config that
    `gen-ssh-config` wrote (the bastion as ProxyJump, the pinned host keys): `--reps` cold runs,
    each with a control path dir of its own (fab keeps no connection between runs either)."""
    exe = ansible_playbook(args.workdir)
    if exe is None:
        return {"skipped": "ansible-core could not be installed"}
    users = {name: host.get("user", "root") for name, host in tomllib.loads(inventory.read_text())["hosts"].items()}
    hosts_ini = args.workdir / f"ansible-hosts-{n}.ini"
    hosts_ini.write_text("[servers]\n" + "".join(f"{s} ansible_user_login={users.get(s, 'root')}\n" for s in servers)
                         + f"[servers:vars]\nansible_ssh_common_args=-F {ssh_config}\n"
                         "ansible_python_interpreter=/usr/bin/python3\n")
    home = args.workdir / "ansible-home"
    runs = []
    for rep in range(args.reps):
        control = args.workdir / f"ansible-cp-{n}-{rep}"
        shutil.rmtree(control, ignore_errors=True)
        env = {"ANSIBLE_HOME": str(home), "ANSIBLE_LOCAL_TEMP": str(home / "tmp"), "ANSIBLE_NOCOLOR": "1",
               "ANSIBLE_SSH_CONTROL_PATH_DIR": str(control), "ANSIBLE_FORKS": str(max(5, n)),
               "ANSIBLE_HOST_KEY_CHECKING": "True"}
        run = runner.process(f"N{n}-ansible{rep + 1}", [str(exe), "-i", str(hosts_ini), str(ANSIBLE_PLAYBOOK)],
                             args.workdir, env=env)
        recap = re.findall(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)",
                           Path(run.output).read_text(errors="replace"), re.MULTILINE)
        run.ansible = {"hosts": len(recap), "changed": sum(int(r[2]) for r in recap),
                       "failed": sum(int(r[3]) + int(r[4]) for r in recap)}
        runs.append(run)
        say(f"  ansible-playbook #{rep + 1}: rc={run.rc} {run.seconds:.2f}s, hosts={run.ansible['hosts']} "
            f"changed={run.ansible['changed']} failed={run.ansible['failed']}; CPU-s: {cpu_line(run)}")
    return group(runs) | {"tasks": ANSIBLE_PLAYBOOK.read_text().count("- name:") - 1,
                          "recaps": [r.ansible for r in runs], "version": ANSIBLE_CORE}


FIRST_HOSTS = ["gpu1", "gpu2"]


def first_bootstrap(args, runner: Runner, results: dict, lab, cwd: Path) -> None:
    """`bootstrap` of two bare servers (gpu1 with systemd, gpu2 without), the apt cache already warm."""
    out: dict = {"hosts": FIRST_HOSTS}
    results["first_bootstrap"] = out
    if len(lab.server_names) < len(FIRST_HOSTS):
        info = lab.up(hosts=len(FIRST_HOSTS))
        say(f"first bootstrap: lab grown to {', '.join(info.servers)}")
    inv = lab.inventory_path
    hosts = ",".join(FIRST_HOSTS)
    if not any(s.get("converged") for s in results["lab"]["sizes"]):
        # nothing was installed through this lab's apt proxy in this run: fill its cache first
        warm = runner.fab("first-bootstrap-warm-up", ["-H", hosts, "bootstrap"], cwd, inv, json_out=True)
        out["warm_up"] = summary(warm)
        say(f"first bootstrap: warm-up (fills the apt cache) rc={warm.rc} {warm.seconds:.1f}s")
    lab.recreate_servers(FIRST_HOSTS)
    out["load_before"] = loadavg()
    runner.meter = CpuMeter(bench_members(lab))  # the new servers' cgroups; their inner containers come later
    run = runner.fab("first-bootstrap-2-bare", ["-H", hosts, "bootstrap"], cwd, inv, json_out=True)
    runner.meter = None
    out["run"] = summary(run)
    out["seconds"] = round(run.seconds, 1)
    out["rc"] = run.rc
    out["round_trips"] = round_trips(run)
    out["load_after"] = loadavg()
    say(f"first bootstrap of {hosts} (bare, apt cache warm): rc={run.rc} {run.seconds:.1f}s, "
        f"changed={run.sum_of('changed')}; round trips per host: "
        + ", ".join(f"{h}: {r['commands']} cmds + {r['connections']} conns" for h, r in out["round_trips"].items())
        + f"; CPU-s: {cpu_line(run)}")


def round_trips(run: FabRun) -> dict:
    """Per host: remote commands + SSH connections, from the --json recap."""
    return {h["host"]: {"commands": h.get("remote_commands"), "connections": h.get("ssh_connections"),
                        "round_trips": (h.get("remote_commands") or 0) + (h.get("ssh_connections") or 0)}
            for h in run.hosts()}


def server_cpu(runs: list[FabRun], n: int, idle: dict) -> dict:
    """Server-side CPU-s per host of converged re-runs on N servers (all N targeted): median over the runs."""
    per_run = [r.cpu["server_total"] / n for r in runs if r.cpu and "server_total" in r.cpu]
    out = {"per_host_runs": [round(v, 3) for v in per_run],
           "per_host_median": round(statistics.median(per_run), 3) if per_run else None,
           "per_host_max": max((round(v, 3) for r in runs if r.cpu for v in (r.cpu.get("servers") or {}).values()),
                               default=None),
           "bastion_median": None}
    bastion = [r.cpu["others_in_lab"].get("bastion") for r in runs if r.cpu and "others_in_lab" in r.cpu]
    if bastion and None not in bastion:
        out["bastion_median"] = round(statistics.median(bastion), 3)
    if idle.get("servers") and idle.get("seconds"):
        out["idle_per_host_per_second"] = round(sum(idle["servers"].values()) / n / idle["seconds"], 4)
    return out


def summary(run: FabRun) -> dict:
    d = {"label": run.label, "rc": run.rc, "seconds": round(run.seconds, 3),
         "peak_rss_mb": None if run.peak_rss_mb is None else round(run.peak_rss_mb, 1),
         "output": run.output, "log_dir": run.log_dir, "cpu_seconds": run.cpu}
    if run.recap is not None:
        d |= {"changed": run.sum_of("changed"), "failed": run.sum_of("failed"),
              "max_ssh_connections": run.max_of("ssh_connections"), "max_remote_commands": run.max_of("remote_commands"),
              "hosts": [{k: h.get(k) for k in ("host", "ok", "changed", "failed", "skipped", "seconds",
                                                "ssh_connections", "remote_commands", "error", "failed_step")}
                        | {"changed_steps": [f"{s['step']}: {s['message']}" for s in h.get("steps", [])
                                             if s.get("status") == "changed"]}
                        for h in run.hosts()]}
    return d


def group(runs: list[FabRun]) -> dict:
    with_recap = [r for r in runs if r.recap is not None]
    return {
        "seconds": stats([r.seconds for r in runs]),
        "rc": [r.rc for r in runs],
        "max_ssh_connections": maxn(r.max_of("ssh_connections") for r in with_recap),
        "max_remote_commands": maxn(r.max_of("remote_commands") for r in with_recap),
        "changed": [r.sum_of("changed") for r in with_recap],
        "peak_rss_mb": maxn(r.peak_rss_mb for r in runs),
        "cpu_seconds_median": {k: round(statistics.median(r.cpu[k] for r in runs), 2)
                               for k in (runs[0].cpu or {})
                               if all(r.cpu and isinstance(r.cpu.get(k), (int, float)) for r in runs)},
        "runs": [summary(r) for r in runs],
    }


def cpu_line(run: FabRun) -> str:
    c = run.cpu or {}
    if not c:
        return f"fab {fmt(run.cpu_seconds)}"
    return (f"fab {fmt(c.get('fab'))}, bench lab {fmt(c.get('bench_lab'))}, others {fmt(c.get('others'))}, "
            f"machine busy {fmt(c.get('machine_busy'))} of {fmt(c.get('machine_capacity'))}")


def probe_stats(logs: dict) -> dict:
    """Seconds of the servers' remote commands (the facts probe) per host, over the given runs."""
    per_host = [h["remote_seconds"] for run in logs.values() for name, h in run.items()
                if not name.endswith(".jump") and h["commands"]]
    return {"median": round(statistics.median(per_host), 2), "max": round(max(per_host), 2)} if per_host else {}


def maxn(values):
    values = [v for v in values if v is not None]
    return round(max(values), 1) if values else None


# --- the synthetic part ---

FAKE_KEY = "AAAAC3NzaC1lZDI1NTE5AAAAIBenchBenchBenchBenchBenchBenchBenchBenchBen"


def synthetic_inventory(directory: Path) -> Path:
    """1,000 GPU servers (host0000..host0999) behind a bastion, 2 containers each, 4 groups, some overrides."""
    d = directory
    (d / "id_ed25519.pub").write_text(f"ssh-ed25519 {FAKE_KEY} bench@gpufleet\n")
    (d / "id_ed25519").write_text("not a key: the synthetic inventory is never connected to\n")
    lines = [
        "# Synthetic gpufleet inventory written by bench/run.py",
        "[run]", "parallel = 50", "",
        "[local]",
        f'ssh_config = "{d / "ssh_config"}"',
        f'known_hosts = "{d / "known_hosts"}"',
        f'identity = "{d / "id_ed25519"}"',
        f'public_keys = ["{d / "id_ed25519.pub"}"]',
        "", "[defaults]", 'user = "root"', 'apt_proxy = "http://10.0.0.2:3142"',
        'registry_mirrors = ["https://docker.m.daocloud.io"]', 'data_root = "/data/docker"',
        'git_name = "Ada Lovelace"', 'git_email = "ada@example.com"', "",
    ]
    sites = {"site-a": "https://mirrors.aliyun.com/docker-ce/linux",
             "site-b": "https://mirrors.tuna.tsinghua.edu.cn/docker-ce/linux"}
    for site, mirror in sites.items():
        lines += [f"[groups.{site}]", 'jump = "bastion"', f'docker_mirror = "{mirror}"',
                  'docker_users = ["ada", "bob"]', "",
                  f"[groups.{site}.containers.dev]", 'image = "pytorch/pytorch:1.13.1-cuda11.6-cudnn8-runtime"',
                  "ssh_port = 2222", 'shm_size = "32g"', 'volumes = ["/data/ada:/workspace", "/data/sets:/sets:ro"]',
                  'env = { TZ = "Asia/Shanghai" }', "",
                  f"[groups.{site}.containers.train]", 'image = "pytorch/pytorch:2.1.0-cuda12.1-cudnn8-runtime"',
                  "ssh_port = 2223", 'volumes = ["/data/train:/workspace"]', 'gpus = "all"', ""]
    lines += ["[groups.big-disk]", 'data_root = "/scratch/docker"', "",
              "[groups.big-disk.containers.dev]", 'shm_size = "64g"', "",
              "[hosts.bastion]", 'address = "bastion.example.com"', ""]
    for i in range(SYNTH_SERVERS):
        groups = ["site-a" if i < SYNTH_SERVERS // 2 else "site-b"] + (["big-disk"] if i % 3 == 0 else [])
        lines += [f"[hosts.host{i:04d}]", f'address = "10.{i // 250}.{(i % 250) // 10}.{i % 10 + 10}"',
                  "groups = [" + ", ".join(f'"{g}"' for g in groups) + "]"]
        if i % 7 == 0:
            lines += ['user = "ada"', "port = 2200"]
        if i % 11 == 0:
            lines += ["[hosts.host%04d.containers.dev]" % i, "ssh_port = 2322"]
        lines.append("")
    path = d / "hosts.toml"
    path.write_text("\n".join(lines))
    aliases = ["bastion"] + [f"host{i:04d}" for i in range(SYNTH_SERVERS)]
    aliases += [f"host{i:04d}-{c}" for i in range(SYNTH_SERVERS) for c in ("dev", "train")]
    (d / "known_hosts").write_text("".join(f"{a} ssh-ed25519 {FAKE_KEY}\n" for a in aliases))
    return path


def in_process(fn, reps: int) -> dict:
    times, value = [], None
    for _ in range(reps):
        started = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - started)
    return {**stats(times), "first": round(times[0], 4)}, value


def synthetic(args, runner: Runner, results: dict) -> None:
    from gpufleet import inventory as inventory_mod
    from gpufleet import ssh_config
    from tasks import sshconfig

    tmp = Path(tempfile.mkdtemp(prefix="gpufleet-bench-synth-"))
    try:
        path = synthetic_inventory(tmp)
        cwd = tmp / "cwd"
        cwd.mkdir()
        reps = args.synthetic_reps
        inv = inventory_mod.load(path)
        n_containers = sum(len(h.containers) for h in inv.hosts.values())
        out = {"hosts": len(inv.hosts), "servers": SYNTH_SERVERS, "containers": n_containers,
               "inventory_bytes": path.stat().st_size, "reps": reps, "uptime": uptime_line()}
        say(f"synthetic inventory: {out['hosts']} hosts ({SYNTH_SERVERS} servers + bastion), "
            f"{n_containers} containers, {out['inventory_bytes']} bytes")

        # in-process: the cores, imports excluded
        out["inprocess_load"], _ = in_process(lambda: inventory_mod.load(path), reps)
        out["inprocess_gen_ssh_config_fresh"], _ = in_process(
            lambda: ssh_config.update(b"", ssh_config.render_block(sshconfig.entries(inventory_mod.load(path)))), reps)
        current = ssh_config.update(b"", ssh_config.render_block(sshconfig.entries(inv)))
        out["inprocess_gen_ssh_config_core"], _ = in_process(
            lambda: ssh_config.update(current, ssh_config.render_block(sshconfig.entries(inv))), reps)
        out["inprocess_show_host_core"], _ = in_process(
            lambda: inventory_mod.describe(inventory_mod.load(path).host("host0500")), reps)
        out["ssh_config_entries"] = len(sshconfig.entries(inv))
        out["ssh_config_bytes"] = len(current)

        # whole processes: Python start-up + imports + the work
        py = sys.executable
        out["cli_python_startup"] = group([runner.process(f"synth-python-c-pass{i}", [py, "-c", "pass"], cwd)
                                           for i in range(reps)])
        out["cli_fab_list"] = group([runner.fab(f"synth-fab-list{i}", ["--list"], cwd, path) for i in range(reps)])
        # where start-up goes: the heaviest imports, each alone in a fresh interpreter
        for key, code in (("cli_import_fabric", "import fabric"), ("cli_import_docker", "import docker.errors"),
                          ("cli_import_fabfile", "import fabfile")):
            out[key] = group([runner.process(f"synth-{key}{i}", [py, "-c", code], cwd, env={"PYTHONPATH": str(REPO)})
                              for i in range(reps)])
        load_code = f"from gpufleet import inventory; inventory.load({str(path)!r})"
        out["cli_load"] = group([runner.process(f"synth-load{i}", [py, "-c", load_code], cwd,
                                                env={"PYTHONPATH": str(REPO)}) for i in range(reps)])
        out["cli_show_host"] = group([runner.fab(f"synth-show-host{i}", ["show-host", "host0500"], cwd, path)
                                      for i in range(reps)])
        # the bastion has no containers: the same load and validation, a table without volumes
        out["cli_show_host_bastion"] = group([runner.fab(f"synth-show-host-bastion{i}", ["show-host", "bastion"],
                                                         cwd, path) for i in range(reps)])
        fresh = []
        for i in range(reps):
            for leftover in (tmp / "ssh_config", tmp / "ssh_config.gpufleet.bak"):
                leftover.unlink(missing_ok=True)
            fresh.append(runner.fab(f"synth-gen-ssh-config-fresh{i}", ["gen-ssh-config"], cwd, path))
        out["cli_gen_ssh_config_fresh"] = group(fresh)
        out["cli_gen_ssh_config_unchanged"] = group(
            [runner.fab(f"synth-gen-ssh-config-unchanged{i}", ["gen-ssh-config"], cwd, path) for i in range(reps)])
        for key in ("cli_python_startup", "cli_fab_list", "cli_load", "cli_show_host", "cli_show_host_bastion",
                    "cli_gen_ssh_config_fresh", "cli_gen_ssh_config_unchanged"):
            bad = [r for r in out[key]["runs"] if r["rc"] != 0]
            if bad:
                tail = Path(bad[0]["output"]).read_text(errors="replace").strip().splitlines()[-1:]
                out.setdefault("errors", []).append(f"{key}: rc={bad[0]['rc']} ({len(bad)} of {len(out[key]['runs'])} "
                                                    f"runs): {tail[0] if tail else ''} (see {bad[0]['output']})")
                say(f"  {out['errors'][-1]}", "red")
        results["synthetic"] = out
        say("  in-process load %.3fs, gen-ssh-config core %.3fs; CLI show-host %.2fs, gen-ssh-config %.2fs "
            "(python start-up %.2fs, fab --list %.2fs)" % (
                out["inprocess_load"]["median"], out["inprocess_gen_ssh_config_fresh"]["median"],
                out["cli_show_host"]["seconds"]["median"], out["cli_gen_ssh_config_fresh"]["seconds"]["median"],
                out["cli_python_startup"]["seconds"]["median"], out["cli_fab_list"]["seconds"]["median"]))
    finally:
        if not args.keep_synthetic:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            say(f"--keep-synthetic: {tmp}")


# --- targets, table, README ---

def fmt(value, spec=".2f", unit=""):
    return "-" if value is None else f"{value:{spec}}{unit}"


def targets(results: dict) -> list[dict]:
    rows = []

    def add(name, measured, target, ok, note=""):
        rows.append({"target": name, "measured": measured, "target_value": target,
                     "status": "n/a" if ok is None else ("pass" if ok else "MISS"), "note": note})

    # a size cut short (error, Ctrl-C) has no figures
    sizes = {s["n"]: s for s in results.get("lab", {}).get("sizes", []) if "gen_ssh_config" in s}
    if sizes:
        conns = {n: s["bootstrap_rerun"]["max_ssh_connections"] for n, s in sizes.items()}
        cmds = {n: s["bootstrap_rerun"]["max_remote_commands"] for n, s in sizes.items()}
        have = all(v is not None for v in [*conns.values(), *cmds.values()])
        add("converged bootstrap: SSH connections per host",
            ", ".join(f"N={n}: {v}" for n, v in conns.items()), f"{MAX_CONNECTIONS}",
            have and all(v <= MAX_CONNECTIONS for v in conns.values()) if have else None,
            "max over hosts and repetitions, from the --json recap (the bastion's one jump connection is extra)")
        add("converged bootstrap: remote commands per host",
            ", ".join(f"N={n}: {v}" for n, v in cmds.items()), f"<= {MAX_COMMANDS}",
            have and all(v <= MAX_COMMANDS for v in cmds.values()) if have else None,
            "max over hosts and repetitions, from the --json recap")
        if 1 not in sizes:
            add("converged bootstrap re-run of one host (N=1), whole fab process", "not measured (no N=1 in --sizes)",
                f"<= {MAX_CONVERGED_ONE} s", None)
        else:
            t1 = sizes[1]["bootstrap_rerun"]["seconds"]
            add("converged bootstrap re-run of one host (N=1), whole fab process", f"median {fmt(t1['median'])}s, "
                f"min {fmt(t1['min'])}s", f"<= {MAX_CONVERGED_ONE} s",
                None if t1["median"] is None else t1["median"] <= MAX_CONVERGED_ONE,
                "python -m fabric, Python start-up included")
        side = {n: (s["bootstrap_rerun"]["seconds"]["median"], s["ansible"]["seconds"]["median"])
                for n, s in sizes.items() if s.get("ansible", {}).get("seconds")}
        if side:
            add("converged re-run: fab bootstrap faster than the Ansible playbook (same servers, same run)",
                ", ".join(f"N={n}: {fmt(a)}s vs {fmt(b)}s" for n, (a, b) in side.items()), "faster",
                all(a is not None and b is not None and a < b for a, b in side.values()),
                "bench/ansible/converged.yml checks less than bootstrap does")
        cpu = {n: s["bootstrap_rerun"].get("server_cpu", {}).get("per_host_median") for n, s in sizes.items()}
        if any(v is not None for v in cpu.values()):
            first_n = min(n for n, v in cpu.items() if v is not None)
            add("server-side CPU per converged host, one converged run",
                ", ".join(f"N={n}: {fmt(v, '.3f')} CPU-s" for n, v in cpu.items()), f"<= {MAX_SERVER_CPU} CPU-s",
                cpu[first_n] <= MAX_SERVER_CPU,
                f"checked at N={first_n}; the server's cgroup (dockerd, sshd, docker CLI) and its inner containers' "
                f"cgroups, median over repetitions, per host")
        idem = {n: s["bootstrap_rerun"]["changed"] for n, s in sizes.items()}
        add("converged bootstrap changes nothing", ", ".join(f"N={n}: {v}" for n, v in idem.items()),
            "0 changed", all(not any(v) for v in idem.values()), "steps reported `changed`, summed over hosts, per repetition")
        if 1 in sizes and 8 in sizes:
            t1 = sizes[1]["bootstrap_rerun"]["seconds"]["median"]
            t8 = sizes[8]["bootstrap_rerun"]["seconds"]["median"]
            ratio = t8 / t1 if t1 else None
            results["scaling_ratio"] = None if ratio is None else round(ratio, 2)
            c1 = sizes[1]["bootstrap_rerun"].get("cpu_seconds_median") or {}
            c8 = sizes[8]["bootstrap_rerun"].get("cpu_seconds_median") or {}
            cpu_note = (f"; CPU-s per run N=1 -> N=8: fab {fmt(c1.get('fab'), '.1f')} -> {fmt(c8.get('fab'), '.1f')}, "
                        f"lab servers {fmt(c1.get('bench_lab'), '.1f')} -> {fmt(c8.get('bench_lab'), '.1f')}, "
                        f"others {fmt(c1.get('others'), '.1f')} -> {fmt(c8.get('others'), '.1f')} "
                        f"on {os.cpu_count()} CPUs") if "bench_lab" in c8 else ""
            add("scaling: converged bootstrap N=8 / N=1 (median)", f"{t8:.2f}s / {t1:.2f}s = {fmt(ratio)}x{cpu_note}",
                f"<= {MAX_SCALING}x", ratio is not None and ratio <= MAX_SCALING)
        if 8 in sizes:
            rss = sizes[8]["peak_rss_mb"]
            add("peak RSS of fab at N=8", f"{fmt(rss['any_fab'], '.0f')} MB (bootstrap re-run "
                f"{fmt(rss['bootstrap_rerun'], '.0f')} MB, converge {fmt(rss['converge'], '.0f')} MB)",
                f"< {MAX_RSS_MB} MB", rss["any_fab"] is not None and rss["any_fab"] < MAX_RSS_MB,
                "max over every fab process at N=8")
        else:
            add("peak RSS of fab at N=8", "not measured (no N=8 in --sizes)", f"< {MAX_RSS_MB} MB", None)
        if not (1 in sizes and 8 in sizes):
            add("scaling: converged bootstrap N=8 / N=1 (median)", "not measured (needs N=1 and N=8 in --sizes)",
                f"<= {MAX_SCALING}x", None)
    first = results.get("first_bootstrap") or {}
    if "seconds" in first:
        trips = ", ".join(f"{h}: {r['round_trips']}" for h, r in first["round_trips"].items())
        add("first bootstrap of two bare servers (apt cache warm), whole fab process",
            f"{first['seconds']:.1f}s (rc {first['rc']}; round trips per host {trips})",
            f"<= {MAX_FIRST_BOOTSTRAP:.0f} s", first["rc"] == 0 and first["seconds"] <= MAX_FIRST_BOOTSTRAP)
    else:
        add("first bootstrap of two bare servers (apt cache warm), whole fab process", "not measured",
            f"<= {MAX_FIRST_BOOTSTRAP:.0f} s", None)
    syn = results.get("synthetic")
    if syn and "cli_gen_ssh_config_unchanged" in syn:
        start = syn["cli_python_startup"]["seconds"]["median"]
        fab_list = syn["cli_fab_list"]["seconds"]["median"]
        label = f"{syn['servers']} servers/{syn['containers']} containers"
        for name, cli_key, core_key in (
                ("gen-ssh-config", "cli_gen_ssh_config_fresh", "inprocess_gen_ssh_config_fresh"),
                ("show-host host0500", "cli_show_host", "inprocess_show_host_core"),
                ("show-host bastion (no containers)", "cli_show_host_bastion", "inprocess_load")):
            cli = syn[cli_key]["seconds"]["median"]
            core = syn[core_key]["median"]
            failed = [r["rc"] for r in syn[cli_key]["runs"] if r["rc"] != 0]
            add(f"{name} ({label}), whole fab CLI", f"{cli:.2f}s (incl. Python start-up + imports, "
                f"fab --list alone {fab_list:.2f}s)" + (f"; EXITED {failed[0]} (crashed)" if failed else ""),
                f"< {MAX_LOCAL_SECONDS:.0f} s", cli < MAX_LOCAL_SECONDS and not failed)
            add(f"{name} ({label}), in-process core", f"{core:.3f}s (no start-up)", f"< {MAX_LOCAL_SECONDS:.0f} s",
                core < MAX_LOCAL_SECONDS)
        load = syn["cli_load"]["seconds"]["median"]
        add(f"inventory.load ({label}), whole python process", f"{load:.2f}s (bare `python -c pass` {start:.2f}s)",
            f"< {MAX_LOCAL_SECONDS:.0f} s", load < MAX_LOCAL_SECONDS)
    return rows


def print_tables(results: dict) -> None:
    sizes = [s for s in results.get("lab", {}).get("sizes", []) if "gen_ssh_config" in s]
    if sizes:
        t = Table(title="gpufleet on the lab (seconds: whole fab process, incl. Python start-up)", title_justify="left")
        for col in ("N", "lab up", "converge", "bootstrap re-run\nmedian / min", "sync-keys\nmedian / min",
                    "gen-ssh-config\nmedian / min", "conns/host\n(max)", "cmds/host\n(max)",
                    "sync-keys\ncmds/host", "peak RSS\nMB", "probe/host s\nmedian / max",
                    "re-run CPU-s: fab / lab /\nothers (busy of cap.)", "load 1m\nbefore→after"):
            t.add_column(col, justify="right")
        for s in sizes:
            br, sk, gc = s["bootstrap_rerun"], s["sync_keys"], s["gen_ssh_config"]
            t.add_row(str(s["n"]), fmt(s["lab_up_seconds"], ".0f"),
                      " + ".join(fmt(c["seconds"], ".1f") for c in s["converge"]) + ("" if s["converged"] else " (failed)"),
                      f"{fmt(br['seconds']['median'])} / {fmt(br['seconds']['min'])}",
                      f"{fmt(sk['seconds']['median'])} / {fmt(sk['seconds']['min'])}",
                      f"{fmt(gc['seconds']['median'])} / {fmt(gc['seconds']['min'])}",
                      str(br["max_ssh_connections"]), str(br["max_remote_commands"]), str(sk["max_remote_commands"]),
                      fmt(s["peak_rss_mb"]["any_fab"], ".0f"), probe_cell(br), cpu_cell(br),
                      f"{s['load_before'][0]:.2f}→{s['load_after'][0]:.2f}")
        console.print(t)
    syn = results.get("synthetic")
    if syn:
        t = Table(title=f"synthetic inventory: {syn['hosts']} hosts, {syn['containers']} containers "
                        f"({syn['ssh_config_entries']} ssh config entries)", title_justify="left")
        for col in ("measure", "median s", "min s", "peak RSS MB"):
            t.add_column(col, justify="right" if col != "measure" else "left")
        for key, name in (("cli_python_startup", "python -c pass (start-up only)"),
                          ("cli_import_fabric", "python -c 'import fabric'"),
                          ("cli_import_docker", "python -c 'import docker.errors'"),
                          ("cli_import_fabfile", "python -c 'import fabfile' (every task module)"),
                          ("cli_fab_list", "fab --list (start-up + fabfile imports)"),
                          ("cli_load", "python -c inventory.load (whole process)"),
                          ("cli_show_host", "fab show-host host0500 (whole process)"),
                          ("cli_show_host_bastion", "fab show-host bastion (whole process)"),
                          ("cli_gen_ssh_config_fresh", "fab gen-ssh-config, new file (whole process)"),
                          ("cli_gen_ssh_config_unchanged", "fab gen-ssh-config, no change (whole process)")):
            s = syn[key]["seconds"]
            bad = [r["rc"] for r in syn[key]["runs"] if r["rc"] != 0]
            t.add_row(name + (f" [red]exit {bad[0]}[/red]" if bad else ""), fmt(s["median"], ".3f"),
                      fmt(s["min"], ".3f"), fmt(syn[key]["peak_rss_mb"], ".0f"))
        for key, name in (("inprocess_load", "in-process inventory.load"),
                          ("inprocess_show_host_core", "in-process load + host + describe (show-host, no render)"),
                          ("inprocess_gen_ssh_config_fresh", "in-process load + entries + render_block + update"),
                          ("inprocess_gen_ssh_config_core", "in-process entries + render_block + update")):
            t.add_row(name, fmt(syn[key]["median"], ".3f"), fmt(syn[key]["min"], ".3f"), "")
        console.print(t)
    trips = round_trip_rows(results)
    if trips:
        t = Table(title="round trips per host (remote commands + SSH connections, from the --json recap)",
                  title_justify="left")
        for col in ("run", "host", "remote commands", "SSH connections", "round trips"):
            t.add_column(col, justify="left" if col in ("run", "host") else "right")
        for row in trips:
            t.add_row(*(str(v) for v in row))
        console.print(t)
    cpu = server_cpu_rows(results)
    if cpu:
        t = Table(title="server-side CPU of converged bootstrap re-runs (CPU-s; lab cgroups)", title_justify="left")
        for col in ("N", "per host, median", "one server, max", "bastion, median", "idle per server (CPU-s/s)"):
            t.add_column(col, justify="right")
        for row in cpu:
            t.add_row(*row)
        console.print(t)
    t = Table(title="targets", title_justify="left")
    for col in ("target", "measured", "target value", "status"):
        t.add_column(col)
    for row in results["targets"]:
        style = {"pass": "green", "MISS": "bold red"}.get(row["status"], "yellow")
        t.add_row(Text(row["target"]), Text(row["measured"]), Text(row["target_value"]), Text(row["status"], style=style))
    console.print(t)
    console.print(Text(targets_met_line(results)))
    console.print(Text(load_line(results)))


def round_trip_rows(results: dict) -> list[tuple]:
    """(run, host, remote commands, SSH connections, round trips) for the first bootstrap and converged re-runs."""
    rows = []
    first = results.get("first_bootstrap") or {}
    for host, r in (first.get("round_trips") or {}).items():
        rows.append(("first bootstrap, 2 bare servers", host, r["commands"], r["connections"], r["round_trips"]))
    for s in results.get("lab", {}).get("sizes", []):
        br = s.get("bootstrap_rerun")
        if br and br.get("max_remote_commands") is not None:
            cmds, conns = br["max_remote_commands"], br["max_ssh_connections"]
            rows.append((f"converged re-run, N={s['n']}", "max over hosts", cmds, conns, cmds + (conns or 0)))
    return rows


def server_cpu_rows(results: dict) -> list[tuple[str, ...]]:
    rows = []
    for s in results.get("lab", {}).get("sizes", []):
        c = (s.get("bootstrap_rerun") or {}).get("server_cpu")
        if c and c.get("per_host_median") is not None:
            rows.append((str(s["n"]), fmt(c["per_host_median"], ".3f"), fmt(c.get("per_host_max"), ".3f"),
                         fmt(c.get("bastion_median"), ".3f"), fmt(c.get("idle_per_host_per_second"), ".4f")))
    return rows


def targets_met_line(results: dict) -> str:
    rows = [r for r in results["targets"] if r["status"] in ("pass", "MISS")]
    met = [r["target"] for r in rows if r["status"] == "pass"]
    missed = [r["target"] for r in rows if r["status"] == "MISS"]
    return (f"targets met: {len(met)} of {len(rows)}" + (f"; missed: {'; '.join(missed)}" if missed else "")
            + (f"; not measured in this run: {sum(1 for r in results['targets'] if r['status'] == 'n/a')}"
               if any(r["status"] == "n/a" for r in results["targets"]) else ""))


def load_line(results: dict) -> str:
    def avg(line: str) -> str:
        return line.split("load average:")[-1].strip() if line else "-"
    return (f"load average (1, 5, 15 min): at start {avg(results['machine'].get('uptime_at_start', ''))}, "
            f"at end {avg(results.get('uptime_at_end', ''))} on {results['machine'].get('nproc')} CPUs")


def probe_cell(block: dict) -> str:
    p = block.get("probe_seconds") or {}
    return f"{fmt(p.get('median'))} / {fmt(p.get('max'))}" if p else "-"


def cpu_cell(block: dict) -> str:
    c = block.get("cpu_seconds_median") or {}
    if "machine_busy" not in c:
        return "-"
    return (f"{fmt(c.get('fab'), '.1f')} / {fmt(c.get('bench_lab'), '.1f')} / {fmt(c.get('others'), '.1f')} "
            f"({c['machine_busy']:.1f} of {c['machine_capacity']:.1f})")


def figures_markdown(results: dict) -> str:
    m = results["machine"]
    lines = [FIGURES_BEGIN, "",
             f"Measured {m['date']} on {m['nproc']} CPUs ({m['cpu']}), {m['memory_gib']} GiB, {m['python3']} "
             f"(venv Python {m['venv_python']}), Docker {m['docker']}, commit {m['git_commit']}; "
             f"{results['reps']} repetitions; whole benchmark {results['wall_seconds'] / 60:.1f} min. "
             f"Load at start: `{m['uptime_at_start'].split('load average:')[-1].strip()}` "
             f"(the machine is shared with other test runs).", ""]
    sizes = [s for s in results.get("lab", {}).get("sizes", []) if "gen_ssh_config" in s]
    if sizes:
        lines += ["| N | converge (s) | bootstrap re-run median / min (s) | sync-keys median / min (s) | "
                  "gen-ssh-config median / min (s) | SSH conns / host | cmds / host | peak RSS (MB) | "
                  "probe / host median / max (s) | re-run CPU-s fab / lab / others (busy of capacity) | load 1m |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for s in sizes:
            br, sk, gc = s["bootstrap_rerun"], s["sync_keys"], s["gen_ssh_config"]
            lines.append(f"| {s['n']} | {' + '.join(fmt(c['seconds'], '.0f') for c in s['converge'])} | "
                         f"{fmt(br['seconds']['median'])} / {fmt(br['seconds']['min'])} | "
                         f"{fmt(sk['seconds']['median'])} / {fmt(sk['seconds']['min'])} | "
                         f"{fmt(gc['seconds']['median'])} / {fmt(gc['seconds']['min'])} | "
                         f"{br['max_ssh_connections']} | {br['max_remote_commands']} | "
                         f"{fmt(s['peak_rss_mb']['any_fab'], '.0f')} | {probe_cell(br)} | {cpu_cell(br)} | "
                         f"{s['load_before'][0]:.1f} → {s['load_after'][0]:.1f} |")
        lines.append("")
        side = [s for s in sizes if s.get("ansible", {}).get("seconds")]
        if side:
            lines += [f"Side by side on the same converged servers, same run: `fab bootstrap` (everything, one probe "
                      f"per host) and `ansible-playbook bench/ansible/converged.yml` ({side[0]['ansible']['tasks']} "
                      f"checks with ansible-core's own modules, cold: no connection kept from the run before):", "",
                      "| N | fab bootstrap re-run median / min (s) | ansible-playbook median / min (s) | ansible changed / failed | "
                      "CPU-s fab / ansible (median) |", "|---|---|---|---|---|"]
            for s in side:
                br, an = s["bootstrap_rerun"], s["ansible"]
                lines.append(f"| {s['n']} | {fmt(br['seconds']['median'])} / {fmt(br['seconds']['min'])} | "
                             f"{fmt(an['seconds']['median'])} / {fmt(an['seconds']['min'])} | "
                             f"{max(r['changed'] for r in an['recaps'])} / {max(r['failed'] for r in an['recaps'])} | "
                             f"{fmt(br['cpu_seconds_median'].get('fab'))} / {fmt(an['cpu_seconds_median'].get('fab'))} |")
            lines.append("")
    syn = results.get("synthetic")
    if syn:
        lines += [f"Synthetic inventory, {syn['hosts']} hosts ({syn['servers']} servers + bastion), "
                  f"{syn['containers']} containers:", "",
                  "| measure | median (s) | min (s) |", "|---|---|---|"]
        for key, name in (("cli_python_startup", "`python -c pass` (interpreter start-up)"),
                          ("cli_import_fabric", "`python -c 'import fabric'`"),
                          ("cli_import_docker", "`python -c 'import docker.errors'`"),
                          ("cli_fab_list", "`fab --list` (start-up + imports of the fabfile)"),
                          ("cli_gen_ssh_config_fresh", "`fab gen-ssh-config`, whole process"),
                          ("cli_show_host", "`fab show-host host0500`, whole process"),
                          ("cli_show_host_bastion", "`fab show-host bastion`, whole process"),
                          ("cli_load", "`inventory.load`, whole python process")):
            s = syn[key]["seconds"]
            bad = [r["rc"] for r in syn[key]["runs"] if r["rc"] != 0]
            lines.append(f"| {name}{f' (exits {bad[0]}: crashes)' if bad else ''} | "
                         f"{fmt(s['median'], '.3f')} | {fmt(s['min'], '.3f')} |")
        for key, name in (("inprocess_gen_ssh_config_fresh", "gen-ssh-config core in-process (load + entries + render + update)"),
                          ("inprocess_show_host_core", "show-host core in-process (load + host + describe, no render)"),
                          ("inprocess_load", "`inventory.load` in-process")):
            lines.append(f"| {name} | {fmt(syn[key]['median'], '.3f')} | {fmt(syn[key]['min'], '.3f')} |")
        lines.append("")
    first = results.get("first_bootstrap") or {}
    if "seconds" in first:
        lines += [f"First `bootstrap` of two bare servers (gpu1 systemd, gpu2 without; apt cache warm): "
                  f"{first['seconds']:.1f} s, exit {first['rc']}; load 1m {first['load_before'][0]:.1f} → "
                  f"{first['load_after'][0]:.1f}.", ""]
    trips = round_trip_rows(results)
    if trips:
        lines += ["| run | host | remote commands | SSH connections | round trips |", "|---|---|---|---|---|"]
        lines += [f"| {' | '.join(str(v) for v in row)} |" for row in trips]
        lines.append("")
    cpu = server_cpu_rows(results)
    if cpu:
        lines += ["Server-side CPU of one converged `bootstrap` re-run (CPU-s, from the lab containers' cgroups: "
                  "each server with its dockerd, and the containers inside it):", "",
                  "| N | per host, median | one server, max | bastion, median | idle per server (CPU-s/s) |",
                  "|---|---|---|---|---|"]
        lines += [f"| {' | '.join(row)} |" for row in cpu]
        lines.append("")
    lines += ["| target | measured | target | status |", "|---|---|---|---|"]
    for row in results["targets"]:
        lines.append(f"| {row['target']} | {row['measured']} | {row['target_value']} | {row['status']} |")
    lines += ["", targets_met_line(results) + ".", "", load_line(results) + ".", "", FIGURES_END]
    return "\n".join(lines)


def write_readme(results: dict) -> None:
    block = figures_markdown(results)
    text = README.read_text() if README.exists() else "# Benchmark\n\n"
    if FIGURES_BEGIN in text and FIGURES_END in text:
        head, rest = text.split(FIGURES_BEGIN, 1)
        tail = rest.split(FIGURES_END, 1)[1]
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    README.write_text(text)
    say(f"figures written to {README}")


# --- main ---

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1,4,8", help="lab sizes, in order (default 1,4,8; empty: none)")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "latest.json"), help="JSON results")
    p.add_argument("--reps", type=int, default=3, help="repetitions of each timed lab command (default 3)")
    p.add_argument("--synthetic-reps", type=int, default=5, help="repetitions of each synthetic measure (default 5)")
    p.add_argument("--workdir", type=Path, default=WORKDIR, help=f"scratch dir: lab files, fab cwd, outputs ({WORKDIR})")
    p.add_argument("--no-synthetic", action="store_true", help="skip the 1,000-host synthetic part")
    p.add_argument("--idle-seconds", type=float, default=10, help="idle CPU sample after each converge (default 10)")
    p.add_argument("--keep-lab", action="store_true", help="leave the bench lab up at the end")
    p.add_argument("--lab", default=f"{PREFIX} {SUBNET}", metavar="'PREFIX SUBNET'",
                   help=f"the bench lab's name prefix and subnet (default '{PREFIX} {SUBNET}')")
    p.add_argument("--no-first-bootstrap", action="store_true",
                   help="skip the first bootstrap of two bare servers (after the sizes)")
    p.add_argument("--keep-synthetic", action="store_true", help="keep the synthetic inventory's temp dir")
    p.add_argument("--no-ansible", dest="ansible", action="store_false",
                   help="skip the side-by-side with ansible-playbook (bench/ansible/converged.yml)")
    p.add_argument("--readme", action="store_true", help="also rewrite the figures block of bench/README.md")
    p.add_argument("--readme-from", type=Path, metavar="JSON",
                   help="only rewrite bench/README.md's figures from an earlier results file, and exit")
    args = p.parse_args(argv)
    if args.readme_from:
        results = json.loads(args.readme_from.read_text())
        results["targets"] = targets(results)
        write_readme(results)
        return 0
    args.sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    try:
        prefix, subnet = args.lab.split()
    except ValueError:
        p.error(f"--lab: expected 'PREFIX SUBNET', got {args.lab!r}")
    args.lab = (prefix, subnet)

    # the tool as installed has its bytecode (pip compiles it; `make setup` too), whatever
    # PYTHONDONTWRITEBYTECODE says in this shell
    compileall.compile_dir(str(REPO / "gpufleet"), quiet=1)
    compileall.compile_dir(str(REPO / "tasks"), quiet=1)
    started = time.monotonic()
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    args.workdir.mkdir(parents=True, exist_ok=True)
    results: dict = {"command": " ".join([Path(sys.executable).name, "bench/run.py", *(argv or sys.argv[1:])]),
                     "machine": machine(), "reps": args.reps, "sizes": args.sizes, "workdir": str(args.workdir)}
    say(f"machine: {results['machine']['nproc']} CPUs, {results['machine']['memory_gib']} GiB, "
        f"{results['machine']['python3']}; {results['machine']['uptime_at_start']}")
    runner = Runner(args.workdir, ensure_gnu_time())
    results["peak_rss_method"] = "GNU time %M" if runner.use_gnu_time else "VmHWM polled every 5 ms"
    code = 0
    try:
        if args.sizes or not args.no_first_bootstrap:
            lab_sizes(args, runner, results)
        if not args.no_synthetic:
            synthetic(args, runner, results)
    except (KeyboardInterrupt, Interrupted) as e:
        results["interrupted"] = str(e) or "Ctrl-C"
        say("interrupted", "red")
        code = 130
    except Exception as e:
        results["error"] = f"{type(e).__name__}: {e}"
        say(f"error: {results['error']}", "red")
        code = 1
    results["wall_seconds"] = round(time.monotonic() - started, 1)
    results["uptime_at_end"] = uptime_line()
    results["targets"] = targets(results)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print_tables(results)
    say(f"total wall time {results['wall_seconds'] / 60:.1f} min; {results['uptime_at_end']}")
    say(f"results: {out}; fab outputs: {runner.outputs}; per-host logs: {args.workdir / 'cwd' / '.gpufleet' / 'logs'}")
    if args.readme and code == 0:
        write_readme(results)
    if code == 0 and any(r["status"] == "MISS" for r in results["targets"]):
        code = 3
    return code


if __name__ == "__main__":
    sys.exit(main())
