"""`fab doctor`: a read-only check of every host and container, with the fix for each problem.

`fab doctor-local` runs the same host and GPU checks on this machine without SSH
(for a GPU box with no sshd, or to check a workstation).
"""
from __future__ import annotations

import json as jsonlib
import re
from dataclasses import dataclass

from invoke import task
from invoke.exceptions import Exit
from gpufleet.output import make_console
from rich.table import Table
from rich.text import Text

from gpufleet import daemon_json, gpu, inventory as inv, sshd_config
from gpufleet.errors import FleetError
from gpufleet.fleet import fleet_task
from gpufleet.files import in_container
from gpufleet.paths import DAEMON_JSON, container_dir, probe_request
from gpufleet.plan import HostContext, HostReport, Plan, Step
from gpufleet.remote import LocalSession
from . import HOST_TASK_HELP
from .containers import SPEC_LABEL, default_shm_size, gpu_path
from .docker import wanted_daemon_keys

PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "skipped"
STYLE = {PASS: "green", WARN: "yellow", FAIL: "bold red", SKIP: "cyan"}
TORCH_CHECK = ("import torch; print(torch.__version__, torch.version.cuda, torch.cuda.is_available(), "
               "torch.cuda.device_count())")
# a real kernel on the GPU: is_available() is true even where the image has no kernel for the GPU's architecture
KERNEL_CHECK = ("import torch; x = torch.arange(1024.0, device='cuda'); y = float((x * 2).sum()); "
                "torch.cuda.synchronize(); print(torch.cuda.get_device_name(0), y)")
KERNEL_SUM = "1047552.0"
MIN_FREE_MB = 20 * 1024


@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


def size_mb(text: str) -> int:
    m = re.fullmatch(r"(\d+)([bkmg]?)", text.lower())
    if not m:
        return 0
    n, unit = int(m.group(1)), m.group(2)
    return {"b": n // 2**20, "k": n // 1024, "m": n, "g": n * 1024, "": n // 2**20}[unit]


def host_checks(c) -> list[Check]:
    f = c.facts()
    checks = []
    if c.host.is_local:
        checks.append(Check("local", PASS, f"this machine, as {c.host.user}, through a local session (no SSH)"))
    else:
        hops = " -> ".join(h.name for h in c.inventory.jump_chain(c.name)) if c.name in c.inventory.hosts else ""
        checks.append(Check("ssh", PASS, f"reached as {c.host.user}" + (f" via {hops}" if hops else "")))
    if not f.docker_running:
        checks.append(Check("docker", FAIL, f.docker_error or "docker info does not answer",
                            f"fab -H {c.name} docker.install"))
        return checks + gpu_checks(c)
    info = f.docker_info
    checks.append(Check("docker", PASS, f"Docker {info.get('ServerVersion')} running, data root {info.get('DockerRootDir')}"))
    current_file = f.file(DAEMON_JSON) if DAEMON_JSON in f.files else None
    try:
        current = daemon_json.parse(current_file.text, DAEMON_JSON) if current_file and current_file.exists else {}
        wanted = wanted_daemon_keys(c)
        merged = daemon_json.merge(current, wanted)
        missing = [k for k in wanted if merged.get(k) != current.get(k)]
        checks.append(Check("daemon.json", FAIL if missing else PASS,
                            f"keys not as wanted: {', '.join(missing)}" if missing else f"has {', '.join(wanted) or 'no managed keys'}",
                            f"fab -H {c.name} docker.configure" if missing else ""))
    except FleetError as e:
        checks.append(Check("daemon.json", FAIL, str(e), "fix the file by hand; the tool never overwrites invalid JSON"))
    for mirror in c.host.registry_mirrors:
        ok = c.run(["curl", "-fsS", "-o", "/dev/null", "-m", "5", "-w", "%{http_code}", f"{mirror}/v2/"],
                   check=False)
        status = PASS if ok.exit_code == 0 or ok.stdout.strip() in ("200", "401") else FAIL
        checks.append(Check("mirror", status, f"{mirror} answered {ok.stdout.strip() or ok.stderr.strip()[-80:]}",
                            "" if status == PASS else "check the mirror URL and the host's route to it"))
    checks.append(images_check(c))
    root = f.images_path  # where the images really are: with the containerd store, containerd's root
    disk = parse_df_line(c.run(["df", "-Pm", root], check=False).stdout)
    free_mb = disk[1] if disk else 0
    detail = (f"{free_mb // 1024} GiB free of {disk[0] // 1024} GiB ({disk[2]} used) on {disk[3]}, which holds {root}"
              if disk else f"df cannot read {root}")
    checks.append(Check("disk", PASS if free_mb >= MIN_FREE_MB else WARN, detail,
                        "" if free_mb >= MIN_FREE_MB else "free space or move data_root to a bigger disk"))
    return checks + gpu_checks(c)


def images_check(c) -> Check:
    """Where the images and layers really are, and whether that is inside data_root."""
    f = c.facts()
    store, path = f.image_store, f.images_path
    where = ("classic store, under data-root" if store.kind == "classic" else
             "containerd store, under containerd's root" if store.system_containerd else
             "containerd store, under dockerd's own containerd in data-root")
    root = c.host.data_root
    if root and path != root and not path.startswith(root.rstrip("/") + "/"):
        return Check("images", FAIL, f"in {path} ({where}), not in data_root {root}", f"fab -H {c.name} docker.configure")
    return Check("images", PASS, f"in {path} ({where})")


def parse_df_line(text: str) -> tuple[int, int, str, str] | None:
    """Pure: `df -Pm PATH` → (size MiB, free MiB, use%, mount point), or None."""
    lines = text.strip().splitlines()
    parts = lines[-1].split() if len(lines) >= 2 else []
    if len(parts) < 6 or not (parts[1].isdigit() and parts[3].isdigit()):
        return None
    return int(parts[1]), int(parts[3]), parts[4], parts[5]


def gpu_checks(c) -> list[Check]:
    f = c.facts()
    if not f.has_gpu:
        return [Check("gpu", SKIP, "no NVIDIA GPU")]
    if f.gpu_source != "nvidia-smi":
        return [Check("gpu", FAIL, f"GPU seen by {f.gpu_source}: {f.gpus[0]}", "install the NVIDIA driver")]
    names = sorted({g.name for g in f.gpus})
    checks = [Check("gpu", PASS, f"{len(f.gpus)}x {', '.join(names)}, driver {f.gpu_driver}, CUDA {f.gpu_cuda}")]
    if f.docker_running:
        checks.append(gpu_path_check(c))
    return checks


def gpu_path_check(c) -> Check:
    """What the engine reports for the host's GPU path: the nvidia runtime among its runtimes, or the
    GPUs among the CDI devices it discovered (docker info)."""
    f = c.facts()
    fix = f"fab -H {c.name} nvidia.install"
    try:
        path, why = gpu_path(c)
    except FleetError as e:
        return Check("gpu path", FAIL, str(e), "set gpu_path = 'auto' or 'runtime'")
    if path == "runtime":
        runtimes = sorted(f.docker_info.get("Runtimes") or {})
        ok = "nvidia" in runtimes
        return Check("gpu path", PASS if ok else FAIL, f"nvidia runtime ({why}); docker info lists runtimes "
                     f"{', '.join(runtimes) or 'none'}", "" if ok else fix)
    devices = [d for d in gpu.cdi_devices(f.docker_info) if d.startswith("nvidia.com/gpu=")]
    lacking = [name for name in ["all", *(g.uuid for g in f.gpus if g.uuid)] if f"nvidia.com/gpu={name}" not in devices]
    detail = f"CDI devices ({why}); docker info lists {', '.join(devices) or 'no nvidia.com/gpu device'}"
    return Check("gpu path", FAIL if lacking else PASS,
                 detail + (f", not nvidia.com/gpu={', '.join(lacking)}" if lacking else ""), fix if lacking else "")


def container_checks(c, name: str) -> list[Check]:
    f = c.facts()
    spec = c.host.containers[name]
    label = f"{name}: "
    info = f.containers.get(name)
    if info is None:
        return [Check(label + "container", FAIL, "does not exist", f"fab -H {c.name} containers.up")]
    if not info["State"]["Running"]:
        return [Check(label + "container", FAIL, f"is {info['State']['Status']}", f"fab -H {c.name} ops.start --container {name}")]
    checks = [Check(label + "container", PASS, f"running {info['Config']['Image']}")]
    inside = f.inside.get(name)
    config_path = f"{container_dir(name)}/sshd_config"
    if inside and inside.sshd_running:
        test = c.run(in_container(name, ["/usr/sbin/sshd", "-t", "-f", "/etc/gpufleet/sshd_config"]), sudo=True, check=False)
        if test.exit_code:
            checks.append(Check(label + "sshd", FAIL, f"config invalid: {test.stderr.strip()[-120:]}", f"fab -H {c.name} containers.up"))
        elif config_path in f.files and sshd_config.password_auth_enabled(f.file(config_path).text):
            checks.append(Check(label + "sshd", FAIL, "password login is enabled", f"fab -H {c.name} containers.up"))
        else:
            checks.append(Check(label + "sshd", PASS, f"running, config valid, key-only, port {spec.ssh_port}"))
    else:
        checks.append(Check(label + "sshd", FAIL, "sshd is not running",
                            f"fab -H {c.name} containers.up (or ops.restart --container {name})"))
    shm = c.run(in_container(name, ["df", "-Pm", "/dev/shm"]), sudo=True, check=False).stdout.splitlines()[-1:]
    have = int(shm[0].split()[1]) if shm and shm[0].split()[1].isdigit() else 0
    want = size_mb(spec.shm_size or default_shm_size(f.mem_total_mb))
    checks.append(Check(label + "/dev/shm", PASS if have >= want * 0.95 else WARN, f"{have} MiB (wanted {want} MiB)",
                        "" if have >= want * 0.95 else f"fab -H {c.name} containers.up re-creates it"))
    env = ((f.images.get(spec.image) or {}).get("Config") or {}).get("Env") or []
    needed = gpu.parse_cuda_requirement(env, info["Config"]["Image"])
    if not f.has_gpu:
        checks.append(Check(label + "gpu", SKIP, "no NVIDIA GPU on the host"))
        checks.append(Check(label + "torch.cuda", SKIP, "no NVIDIA GPU on the host"))
        return checks
    if jsonlib.loads((info["Config"].get("Labels") or {}).get(SPEC_LABEL) or "{}").get("gpus") == "none":
        checks.append(Check(label + "gpu", SKIP, "gpus = none: no GPU given to it"))
        return checks
    if needed and f.gpu_cuda:
        fine = gpu.driver_supports_cuda(f.gpu_cuda, needed)
        checks.append(Check(label + "cuda", PASS if fine else FAIL, f"image needs CUDA {needed}, driver supports {f.gpu_cuda}",
                            "" if fine else "upgrade the driver or use an older image"))
    smi = c.run(in_container(name, ["nvidia-smi", "-L"]), sudo=True, check=False)
    count = len(gpu.parse_smi_list(smi.stdout)) if smi.exit_code == 0 else 0
    checks.append(Check(label + "gpu", PASS if count else FAIL, f"{count} GPU(s) visible inside",
                        "" if count else "re-create the container with gpus = 'all' after nvidia.install"))
    checks.append(torch_check(c, in_container(name, ["python3", "-c", TORCH_CHECK]), label))
    checks.append(kernel_check(c, name, label))
    return checks


def kernel_check(c, name: str, label: str = "") -> Check:
    """A small real CUDA computation in the container: torch where the image has it, else nvidia-smi."""
    result = c.run(in_container(name, ["python3", "-c", KERNEL_CHECK]), sudo=False, check=False)
    output = result.stdout + result.stderr
    if result.exit_code == 0 and output.split()[-1:] == [KERNEL_SUM]:
        return Check(label + "cuda kernel", PASS, f"a torch kernel ran on {' '.join(result.stdout.split()[:-1])}")
    if "No module named" in output or ("python3" in output and "not found" in output.lower()):
        smi = c.run(in_container(name, ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"]), sudo=False,
                    check=False)
        names = ", ".join(line.strip() for line in smi.stdout.splitlines() if line.strip())
        if smi.exit_code == 0 and names:
            return Check(label + "cuda kernel", PASS, f"no torch in the image; nvidia-smi answers: {names}")
        return Check(label + "cuda kernel", FAIL, "no torch in the image, and nvidia-smi fails: "
                     + gpu.explain_kernel_failure(smi.stdout + smi.stderr), "re-create the container after nvidia.install")
    return Check(label + "cuda kernel", FAIL, gpu.explain_kernel_failure(output),
                 "use an image built for a CUDA new enough for this GPU (containers.up names one)"
                 if gpu.NO_KERNEL_RE.search(output) else "")


def torch_check(c, argv: list[str], label: str = "") -> Check:
    result = c.run(argv, sudo=False, check=False)
    if result.exit_code:
        detail = result.stderr.strip().splitlines()[-1:] or ["python3 failed"]
        return Check(label + "torch.cuda", WARN if "No module named" in detail[0] else FAIL, detail[0][-160:],
                     "install PyTorch in the image" if "No module named" in detail[0] else "")
    version, cuda, available, count = (result.stdout.split() + ["", "", "", ""])[:4]
    ok = available == "True"
    return Check(label + "torch.cuda", PASS if ok else FAIL,
                 f"torch {version} (CUDA {cuda}): is_available() = {available}, {count} device(s)",
                 "" if ok else "check --gpus and the driver/CUDA versions")


def plan_doctor(c) -> Plan:
    checks = host_checks(c)
    for name in c.host.containers:
        checks += container_checks(c, name)
    c.report.data = [[c.name, ch.name, ch.status, ch.detail, ch.fix] for ch in checks]
    failed = [ch.name for ch in checks if ch.status == FAIL]
    return Plan.ok(f"{len(checks)} checks, {len(failed)} failed" + (f": {', '.join(failed)}" if failed else ""))


DOCTOR = Step("doctor", plan_doctor)


def print_doctor(reports) -> int:
    table = Table(title="Doctor", title_justify="left")
    for column in ("host", "check", "result", "detail", "fix"):
        table.add_column(column)
    failed = False
    for report in reports:
        if report.failed and not report.data:
            table.add_row(report.host, "ssh", Text(FAIL, style=STYLE[FAIL]), Text(report.error),
                          "check the address, the jump host and the key")
            failed = True
        for host, name, status, detail, fix in report.data:
            failed |= status == FAIL
            table.add_row(Text(host), Text(name), Text(status, style=STYLE[status]), Text(detail), Text(fix))
    make_console().print(table, soft_wrap=False)
    return 1 if failed else 0


def local_checks() -> list[Check]:
    """The host and GPU checks on this machine, through a local session (no SSH)."""
    inventory = inv.loads('[hosts.local]\naddress = "local"\n', "<local>")
    ctx = HostContext(inventory.host("local"), inventory, LocalSession("local"))
    ctx.probe_request = probe_request
    checks = host_checks(ctx)
    checks.append(torch_check(ctx, ["python3", "-c", TORCH_CHECK]))
    return checks


def local_doctor() -> int:
    rows = [["local", ch.name, ch.status, ch.detail, ch.fix] for ch in local_checks()]
    return print_doctor([HostReport("local", data=rows)])


@task(help=HOST_TASK_HELP)
@fleet_task(default_hosts="all", after=print_doctor)
def doctor(c, dry_run=False, json=None):
    """Check every host and container read-only: pass/warn/fail and the fix for each."""
    c.run_steps([DOCTOR])


@task(name="doctor-local")
def doctor_local(c):
    """Run doctor's host and GPU checks on this machine through a local session (no SSH)."""
    code = local_doctor()
    if code:
        raise Exit(code=code)
