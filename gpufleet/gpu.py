"""Pure parsers of nvidia-smi and lspci output, and CUDA version arithmetic."""
from __future__ import annotations

import csv
import io
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

QUERY_FIELDS = ("index", "name", "uuid", "driver_version", "memory_total_mib", "compute_cap", "pci_bus_id")


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    uuid: str = ""
    driver_version: str = ""
    memory_total_mib: int = 0
    compute_cap: str = ""
    pci_bus_id: str = ""

    def __str__(self) -> str:
        return self.name


# the --query-gpu field names, in the order the probe asks for them (QUERY_FIELDS are the Gpu attributes)
QUERY_COLUMNS = ("index", "name", "uuid", "driver_version", "memory.total", "compute_cap", "pci.bus_id")


def _query_column(header: str) -> str:
    """'memory.total [MiB]' → 'memory.total': the field name of a CSV header cell."""
    return header.split("[", 1)[0].strip().lower()


def _query_rows(text: str, columns: tuple[str, ...]) -> list[dict[str, str]]:
    """The rows of an `nvidia-smi --query-gpu=... --format=csv[,noheader][,nounits]` answer as field → cell.
    Without a header the fields are `columns`, in that order; a header gives them by name, so a query with
    other or more fields still reads. Error lines, and a header without an index column, are skipped."""
    order = {name: i for i, name in enumerate(columns)}
    rows = []
    for row in csv.reader(io.StringIO(text.strip())):
        cells = [c.strip() for c in row]
        names = [_query_column(c) for c in cells]
        if "index" in names:
            order = {name: i for i, name in enumerate(names)}
            continue
        value = {name: cells[i] if i < len(cells) else "" for name, i in order.items()}
        if len(cells) >= 2 and value.get("index", "").isdigit():
            rows.append(value)
    return rows


def parse_query_gpu(text: str) -> list[Gpu]:
    """Pure: `nvidia-smi --query-gpu=index,name,uuid,driver_version,memory.total,compute_cap,pci.bus_id
    --format=csv[,noheader][,nounits]`.  Without a header the fields are taken in that order; with one
    (`--format=csv`) they are found by name, so a query with other or more fields still parses."""
    gpus = []
    for values in _query_rows(text, QUERY_COLUMNS):
        memory = re.match(r"(\d+)", values.get("memory.total", ""))
        gpus.append(Gpu(int(values["index"]), values.get("name", ""), values.get("uuid", ""),
                        values.get("driver_version", ""), int(memory.group(1)) if memory else 0,
                        values.get("compute_cap", ""), values.get("pci.bus_id", "")))
    return gpus


def parse_smi_table_cuda(text: str) -> tuple[str, str] | None:
    """Pure: (driver version, CUDA version) from the header of the default `nvidia-smi` table
    (or from `nvidia-smi -q`, which aligns the colons: `Driver Version     : 555.42.02`)."""
    driver = re.search(r"Driver Version\s*:\s*([0-9.]+)", text)
    cuda = re.search(r"CUDA Version\s*:\s*([0-9.]+)", text)
    if not driver and not cuda:
        return None
    return (driver.group(1) if driver else "", cuda.group(1) if cuda else "")


def parse_smi_xml(text: str) -> dict:
    """Pure: `nvidia-smi -q -x` → {"driver": str, "cuda": str, "gpus": [{"name", "uuid", "mig"}]}."""
    root = ET.fromstring(re.sub(r"<!DOCTYPE[^>]*>", "", text.strip()))
    gpus = [{"name": g.findtext("product_name", "").strip(), "uuid": g.findtext("uuid", "").strip(),
             "mig": g.findtext("mig_mode/current_mig", "").strip()} for g in root.findall("gpu")]
    return {"driver": root.findtext("driver_version", "").strip(), "cuda": root.findtext("cuda_version", "").strip(),
            "gpus": gpus}


def parse_smi_list(text: str) -> list[str]:
    """Pure: `nvidia-smi -L` → GPU lines (MIG child lines are not separate GPUs)."""
    return [line.strip() for line in text.splitlines() if re.match(r"^GPU \d+:", line.strip())]


FAILURES = (
    (re.compile(r"couldn.?t\s+communicate\s+with\s+the\s+NVIDIA\s+driver", re.S | re.I),
     "nvidia-smi cannot talk to the NVIDIA driver (not loaded, or a version mismatch)"),
    (re.compile(r"No devices were found", re.I), "the driver is loaded but found no GPU"),
    (re.compile(r"Driver/library version mismatch", re.I),
     "the loaded NVIDIA kernel module and the driver libraries differ (reboot after a driver upgrade)"),
    (re.compile(r"couldn.?t find libnvidia-ml\.so", re.I), "the NVIDIA driver libraries (libnvidia-ml.so) are missing"),
    (re.compile(r"Failed to initialize NVML", re.I), "NVML could not be initialised"),
)


def classify_smi_failure(text: str) -> str | None:
    """Pure: a one-line reason for a failed nvidia-smi, or None when the text is not a known failure."""
    flat = " ".join(text.split())
    for pattern, reason in FAILURES:
        if pattern.search(flat):
            return reason
    return None


def parse_lspci_nvidia(text: str) -> list[Gpu]:
    """Pure: NVIDIA VGA/3D controllers in `lspci -nn` output (vendor [10de])."""
    gpus = []
    for line in text.splitlines():
        if "[10de:" in line and re.search(r"(VGA compatible|3D) controller", line):
            name = line.split(": ", 1)[-1]
            gpus.append(Gpu(len(gpus), name, pci_bus_id=line.split()[0]))
    return gpus


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:2]) or (0,)


def driver_supports_cuda(driver_cuda: str, required: str) -> bool:
    """True when the driver's CUDA version (nvidia-smi header) is at least the required one."""
    return _version(driver_cuda) >= _version(required)


def parse_cuda_requirement(env, image_ref: str) -> str | None:
    """The CUDA version an image needs: NVIDIA_REQUIRE_CUDA, then CUDA_VERSION, then a tag like cuda11.6."""
    pairs = dict(e.split("=", 1) for e in env if "=" in e) if isinstance(env, list) else dict(env or {})
    m = re.search(r"cuda>=\s*([0-9]+(?:\.[0-9]+)?)", pairs.get("NVIDIA_REQUIRE_CUDA", ""))
    if m:
        return m.group(1)
    m = re.match(r"([0-9]+\.[0-9]+)", pairs.get("CUDA_VERSION", ""))
    if m:
        return m.group(1)
    tag = image_ref.rsplit(":", 1)[-1] if ":" in image_ref.rsplit("/", 1)[-1] else ""
    m = re.search(r"cuda[-_]?([0-9]+)\.?([0-9]+)?", tag)
    if m:
        return f"{m.group(1)}.{m.group(2) or '0'}"
    # NVIDIA's own images name the CUDA version first: nvidia/cuda:12.8.0-base-ubuntu24.04
    m = re.match(r"([0-9]+\.[0-9]+)\.", tag)
    if m and image_ref.rsplit(":", 1)[0].endswith("nvidia/cuda"):
        return m.group(1)
    return None


# --- GPU processes of a container, seen from its host ---

COMPUTE_APPS = ("nvidia-smi", "--query-compute-apps=pid,process_name,used_gpu_memory", "--format=csv,noheader,nounits")


@dataclass(frozen=True)
class ComputeApp:
    """A process using a GPU as the host's nvidia-smi lists it: a host PID (one row per GPU it uses)."""
    pid: int
    name: str
    used_mib: int | None = None  # None where the driver reports [N/A] (WSL, MIG, some vGPUs)

    def __str__(self) -> str:
        return f"pid {self.pid} {self.name}" + (f" ({self.used_mib} MiB)" if self.used_mib is not None else "")


def parse_compute_apps(text: str) -> list[ComputeApp]:
    """Pure: `nvidia-smi --query-compute-apps=pid,process_name,used_gpu_memory --format=csv,noheader,nounits`.

    No process gives no output.  A header (`--format=csv`) or unit (`10240 MiB`) is tolerated; a process name
    with ", " in it is kept whole (the fields are not quoted: the first is the pid, the last the memory)."""
    apps = []
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.split(",")]
        if len(cells) < 3 or not cells[0].isdigit():
            continue  # a header, a blank line, or a message such as "No running processes found"
        memory = re.match(r"(\d+)", cells[-1])
        apps.append(ComputeApp(int(cells[0]), ", ".join(cells[1:-1]), int(memory.group(1)) if memory else None))
    return apps


def parse_top_pids(text: str) -> set[int] | None:
    """Pure: the PID column of `docker top NAME [ps options]` (host PIDs of every process in the container),
    found by its header; None when the output has no PID column (not docker top's table)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines or "PID" not in lines[0].split():
        return None
    column = lines[0].split().index("PID")
    return {int(cells[column]) for cells in (line.split() for line in lines[1:])
            if len(cells) > column and cells[column].isdigit()}


def container_gpu_processes(apps: list[ComputeApp], container_pids: set[int]) -> list[ComputeApp]:
    """Pure: the GPU processes that belong to the container, one per PID (memory summed over its GPUs)."""
    rows: dict[int, list[ComputeApp]] = {}
    for app in apps:
        if app.pid in container_pids:
            rows.setdefault(app.pid, []).append(app)
    merged = []
    for pid, same in sorted(rows.items()):
        known = [app.used_mib for app in same if app.used_mib is not None]
        merged.append(ComputeApp(pid, same[0].name, sum(known) if known else None))
    return merged


def gpu_work_verdict(smi: tuple[int, str] | None, top: tuple[int, str]) -> str:
    """Pure: why removing a running container would kill GPU work, or "" when it would not.

    `smi` is (exit code, output) of COMPUTE_APPS run on the host, None where the host has no nvidia-smi (no
    driver: no GPU process can run).  `top` is (exit code, output) of `docker top NAME -eo pid` on the host.
    An nvidia-smi that fails (other than "no devices") or a docker top that cannot be read means we cannot
    tell, which refuses too."""
    if smi is None:
        return ""
    rc, output = smi
    if rc != 0:
        reason = classify_smi_failure(output)
        if reason == "the driver is loaded but found no GPU":
            return ""
        last = next((line.strip() for line in reversed(output.splitlines()) if line.strip()), f"exit {rc}")
        return f"cannot tell whether GPU processes run in it: nvidia-smi failed on the host ({reason or last})"
    apps = parse_compute_apps(output)
    if not apps:
        return ""
    pids = parse_top_pids(top[1]) if top[0] == 0 else None
    if pids is None:
        last = next((line.strip() for line in reversed(top[1].splitlines()) if line.strip()), f"exit {top[0]}")
        return f"cannot tell whether GPU processes run in it: docker top failed ({last})"
    mine = container_gpu_processes(apps, pids)
    if not mine:
        return ""
    return f"GPU processes are running in it ({', '.join(str(app) for app in mine)})"


# --- the GPU path: the nvidia runtime or CDI devices ---

GPU_PATHS = ("runtime", "cdi")
CDI_SPEC = "/var/run/cdi/nvidia.yaml"
CDI_REFRESH_UNITS = ("nvidia-cdi-refresh.path", "nvidia-cdi-refresh.service")
# Docker enables CDI by default and lists the devices it found in `docker info` from 28.2; the toolkit
# ships nvidia-cdi-refresh and makes its runtime use a just-in-time CDI spec from 1.18
CDI_DOCKER = (28, 2)
CDI_TOOLKIT = (1, 18)
GPU_ID_RE = re.compile(r"^(GPU|MIG)-[A-Za-z0-9/-]+$")


def version_tuple(text: str) -> tuple[int, ...]:
    """Pure: '29.7.2' → (29, 7, 2); a Debian version ('5:26.1.5-1~debian.13~trixie', '26.1.5+dfsg1') by its
    upstream part; () when it has no number."""
    upstream = text.split(":", 1)[-1]
    m = re.match(r"(\d+(?:\.\d+)*)", upstream)
    return tuple(int(part) for part in m.group(1).split(".")) if m else ()


def parse_ctk_version(rc: int, out: str) -> str:
    """Pure: the toolkit's version from `nvidia-ctk --version` ('NVIDIA Container Toolkit CLI version 1.20.0'
    and a commit line), "" where it did not run (no toolkit, or one older than nvidia-ctk)."""
    m = re.search(r"^NVIDIA Container Toolkit CLI version\s+(\d+\.\d+\.\d+\S*)", out, re.M)
    return m.group(1) if rc == 0 and m else ""


def cdi_devices(docker_info: dict | None) -> list[str]:
    """Pure: the CDI devices the engine discovered (`docker info`'s DiscoveredDevices, Docker 28.2+)."""
    return [d.get("ID", "") for d in (docker_info or {}).get("DiscoveredDevices") or [] if d.get("Source") == "cdi"]


def refresh_units(systemd: bool, units: dict[str, dict[str, str]]) -> tuple[bool, bool]:
    """Pure: (the host has the toolkit's nvidia-cdi-refresh units, they need enabling) from `systemctl show`:
    both enabled, and the path unit active (watching the driver's modules and nvidia-ctk)."""
    mine = {name: units.get(name, {}) for name in CDI_REFRESH_UNITS}
    if not systemd or not all(u.get("LoadState") == "loaded" for u in mine.values()):
        return False, False
    off = any(u.get("UnitFileState") not in ("enabled", "enabled-runtime") for u in mine.values())
    return True, off or mine["nvidia-cdi-refresh.path"].get("ActiveState") != "active"


def choose_gpu_path(setting: str, docker_info: dict | None, toolkit_version: str,
                    kept_at_boot: bool = True) -> tuple[str, str]:
    """Pure: ("runtime" | "cdi", why) for `gpu_path` = auto | runtime | cdi on a host whose engine says
    `docker_info` and whose `nvidia-ctk --version` is `toolkit_version`.  auto takes CDI devices where the
    engine has CDI on by default (28.2+, its CDISpecDirs listed), the toolkit keeps a CDI spec (1.18+) and
    something makes that spec again after a reboot (`kept_at_boot`: systemd with the toolkit's refresh units;
    CDI_SPEC is on a tmpfs), else the nvidia runtime, which makes its CDI spec as each container starts.
    ValueError where `cdi` is asked of a host that cannot do it."""
    info = docker_info or {}
    engine, toolkit = info.get("ServerVersion", ""), toolkit_version
    missing = []
    if version_tuple(engine) < CDI_DOCKER:
        missing.append(f"Docker {engine or '?'} (CDI needs 28.2+)")
    if not info.get("CDISpecDirs"):
        missing.append("CDI is off in the engine (docker info lists no CDISpecDirs)")
    if version_tuple(toolkit) < CDI_TOOLKIT:
        missing.append(f"toolkit {toolkit or 'not installed'} (CDI here needs 1.18+)")
    if setting == "runtime":
        return "runtime", "gpu_path = runtime"
    if setting == "cdi":
        if missing:
            raise ValueError("gpu_path = 'cdi' but this host has " + ", ".join(missing))
        return "cdi", "gpu_path = cdi"
    if setting != "auto":
        raise ValueError(f"gpu_path {setting!r} is not one of auto, runtime, cdi")
    if missing:
        return "runtime", "nvidia runtime: " + ", ".join(missing)
    if not kept_at_boot:
        return "runtime", ("nvidia runtime: nothing makes a CDI spec again after a reboot here (no systemd with "
                           "nvidia-cdi-refresh); the runtime makes its own as each container starts")
    return "cdi", f"CDI devices: Docker {engine}, toolkit {toolkit}"


def gpu_run_args(gpu_path: str, gpus) -> list[str]:
    """Pure: the `docker run` arguments that give a container `gpus` ("none", "all", or a list of GPU/MIG
    UUIDs) through `gpu_path` ("runtime": the nvidia runtime and --gpus; "cdi": one --device per CDI name).

    A list for --gpus is one argument with its double quotes (the shell form '"device=U1,U2"'): Docker
    reads --gpus as CSV, where a bare comma would split the device list."""
    if gpus == "none":
        return []
    if gpu_path not in GPU_PATHS:
        raise ValueError(f"gpu_path {gpu_path!r} is not one of {', '.join(GPU_PATHS)}")
    if gpus != "all":
        if isinstance(gpus, str) or not gpus:
            raise ValueError(f"gpus {gpus!r} is not 'none', 'all' or a list of GPU UUIDs")
        bad = [g for g in gpus if not isinstance(g, str) or not GPU_ID_RE.match(g)]
        if bad:
            raise ValueError(f"{bad[0]!r} is not a GPU or MIG UUID (GPU-… or MIG-…)")
    if gpu_path == "runtime":
        return ["--runtime", "nvidia", "--gpus", "all" if gpus == "all" else f'"device={",".join(gpus)}"']
    names = ["all"] if gpus == "all" else list(gpus)
    return [arg for name in names for arg in ("--device", f"nvidia.com/gpu={name}")]


def cdi_spec_problem(spec: str | None, spec_mtime: int | None, ctk_mtime: int | None, driver: str,
                     uuids: list[str]) -> str:
    """Pure: why the toolkit's CDI spec (its text, None where it is missing) is not current, or "".

    Current means: not older than nvidia-ctk (a toolkit install or upgrade replaces it), made for the
    loaded driver (the spec mounts the driver's libraries by their versioned names: libcuda.so.DRIVER)
    and naming every GPU nvidia-smi lists by its UUID (a GPU added or swapped).  A spec of WSL's, whose
    libraries have no version in their names, is checked by its age and its GPUs only."""
    if spec is None:
        return f"{CDI_SPEC} is missing"
    if spec_mtime is not None and ctk_mtime is not None and spec_mtime < ctk_mtime:
        return f"{CDI_SPEC} is older than the toolkit's nvidia-ctk"
    made_for = set(re.findall(r"libcuda\.so\.(\d+\.\d+(?:\.\d+)?)", spec))
    if driver and made_for and driver not in made_for:  # WSL's libraries have no version in their names
        return f"{CDI_SPEC} was made for driver {', '.join(sorted(made_for))}, not {driver}"
    absent = [u for u in uuids if u and f"name: {u}" not in spec]
    if absent:
        return f"{CDI_SPEC} does not name {', '.join(absent)}"
    return ""


def parse_unit_states(out: str) -> dict[str, dict[str, str]]:
    """Pure: `systemctl show --property=Id,LoadState,UnitFileState,ActiveState UNIT...` → {unit: {property:
    value}}; a unit the system does not have has LoadState=not-found."""
    units = {}
    for block in re.split(r"\n\s*\n", out.strip()):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if props.get("Id"):
            units[props["Id"]] = props
    return units


def parse_mtimes(out: str) -> dict[str, int]:
    """Pure: `stat -L -c '%Y %n' PATH...` → {path: modification time, seconds since the epoch}."""
    found = {}
    for line in out.splitlines():
        seconds, _, path = line.partition(" ")
        if seconds.isdigit() and path:
            found[path] = int(seconds)
    return found


# --- which GPUs a server has, by UUID (MIG devices included) ---

@dataclass(frozen=True)
class MigDevice:
    """A MIG instance as `nvidia-smi -L` lists it under its GPU: a device of its own, with its own UUID."""
    uuid: str
    gpu_index: int
    profile: str

    def __str__(self) -> str:
        return f"MIG {self.profile} on GPU {self.gpu_index}"


def parse_mig_devices(text: str) -> list[MigDevice]:
    """Pure: the MIG devices in `nvidia-smi -L` (the indented `MIG 3g.20gb Device 0: (UUID: MIG-...)` lines,
    each under its `GPU N:` line)."""
    devices, parent = [], None
    for line in text.splitlines():
        top = re.match(r"^GPU (\d+):", line.strip())
        if top:
            parent = int(top.group(1))
            continue
        mig = re.match(r"^\s*MIG\s+(\S+)\s+Device\s+\d+:\s*\(UUID:\s*(MIG-[0-9A-Za-z/-]+)\)", line)
        if mig and parent is not None:
            devices.append(MigDevice(mig.group(2), parent, mig.group(1)))
    return devices


# --- the GPUs a CUDA build has kernels for ---

# compute capability -> (architecture, the first CUDA release whose toolkit builds kernels for it), from
# NVIDIA's CUDA release notes; an image built against an older CUDA has no kernel for that GPU
ARCH_MIN_CUDA = {
    "7.0": ("Volta sm_70", "9.0"),
    "7.5": ("Turing sm_75", "10.0"),
    "8.0": ("Ampere sm_80", "11.0"),
    "8.6": ("Ampere sm_86", "11.1"),
    "8.7": ("Ampere sm_87", "11.4"),
    "8.9": ("Ada sm_89", "11.8"),
    "9.0": ("Hopper sm_90", "11.8"),
    "10.0": ("Blackwell sm_100", "12.8"),
    "10.1": ("Blackwell sm_101", "12.8"),
    "10.3": ("Blackwell sm_103", "12.9"),
    "12.0": ("Blackwell sm_120", "12.8"),
    "12.1": ("Blackwell sm_121", "12.9"),
}

# tags of well-known images that carry kernels for a CUDA version and up: (CUDA, tag), oldest first
WORKING_TAGS = {
    "pytorch/pytorch": (("11.8", "2.1.0-cuda11.8-cudnn8-runtime"), ("12.8", "2.7.0-cuda12.8-cudnn9-runtime"),
                        ("12.9", "2.8.0-cuda12.9-cudnn9-runtime")),
    "nvidia/cuda": (("11.8", "11.8.0-base-ubuntu22.04"), ("12.8", "12.8.0-base-ubuntu24.04"),
                    ("12.9", "12.9.0-base-ubuntu24.04")),
}


def min_cuda_for(compute_cap: str) -> tuple[str, str] | None:
    """Pure: (architecture, oldest CUDA with kernels for it) of a compute capability; None where unknown."""
    return ARCH_MIN_CUDA.get(compute_cap.strip())


def working_tag(image_ref: str, cuda: str) -> str:
    """Pure: an image of the same repository that has kernels for CUDA `cuda`, or what to look for."""
    repository = image_ref.rsplit(":", 1)[0] if ":" in image_ref.rsplit("/", 1)[-1] else image_ref
    repository = repository.removeprefix("docker.io/").removeprefix("library/")
    for version, tag in WORKING_TAGS.get(repository, ()):
        if _version(version) >= _version(cuda):
            return f"{repository}:{tag}"
    return f"a {repository} tag built for CUDA {cuda} or newer"


def arch_mismatch(image_ref: str, image_cuda: str | None, gpus: list[Gpu]) -> str:
    """Pure: one line naming the image's CUDA, the GPU it has no kernels for and a tag that would work;
    "" where every GPU is fine or the image's CUDA or the GPU's architecture is not known."""
    if not image_cuda:
        return ""
    for card in gpus:
        needs = min_cuda_for(card.compute_cap)
        if needs and _version(image_cuda) < _version(needs[1]):
            return (f"image {image_ref} is built for CUDA {image_cuda}, which has no kernels for GPU {card.index} "
                    f"({card.name}, compute capability {card.compute_cap}, {needs[0]} needs CUDA >= {needs[1]}): "
                    f"use {working_tag(image_ref, needs[1])}")
    return ""


NO_KERNEL_RE = re.compile(r"no kernel image is available for execution on the device", re.I)


def explain_kernel_failure(output: str) -> str:
    """Pure: plain words for a CUDA computation that failed, from its output."""
    if NO_KERNEL_RE.search(output):
        return ("the image's CUDA build has no kernel for this GPU's architecture (CUDA error: no kernel image is "
                "available): use an image built for a newer CUDA")
    last = next((line.strip() for line in reversed(output.splitlines()) if line.strip()), "no output")
    return last[-200:]


# --- the fleet's GPUs, live: ops.gpus ---

STATUS_COLUMNS = ("index", "uuid", "name", "memory.used", "memory.total", "utilization.gpu", "temperature.gpu",
                  "compute_cap")
GPU_STATUS = ("nvidia-smi", "--query-gpu=" + ",".join(STATUS_COLUMNS), "--format=csv,noheader,nounits")
GPU_APPS = ("nvidia-smi", "--query-compute-apps=gpu_uuid,pid,process_name,used_gpu_memory",
            "--format=csv,noheader,nounits")


@dataclass(frozen=True)
class GpuStatus:
    """One GPU as ops.gpus shows it; a number the driver does not report ([N/A]) is None."""
    index: int
    uuid: str
    name: str
    memory_used_mib: int | None
    memory_total_mib: int | None
    utilization: int | None
    temperature: int | None
    compute_cap: str = ""


def _number(cell: str) -> int | None:
    m = re.match(r"\s*(\d+)", cell)
    return int(m.group(1)) if m else None


def parse_gpu_status(text: str) -> list[GpuStatus]:
    """Pure: `nvidia-smi --query-gpu=index,uuid,name,memory.used,memory.total,utilization.gpu,temperature.gpu,
    compute_cap --format=csv[,noheader][,nounits]` (a header, if any, gives the column order)."""
    return [GpuStatus(int(value["index"]), value.get("uuid", ""), value.get("name", ""),
                      _number(value.get("memory.used", "")), _number(value.get("memory.total", "")),
                      _number(value.get("utilization.gpu", "")), _number(value.get("temperature.gpu", "")),
                      value.get("compute_cap", "")) for value in _query_rows(text, STATUS_COLUMNS)]


def parse_gpu_apps(text: str) -> list[tuple[str, ComputeApp]]:
    """Pure: `nvidia-smi --query-compute-apps=gpu_uuid,pid,process_name,used_gpu_memory --format=csv,noheader,
    nounits` → [(GPU UUID, process)] (a name with ", " in it is kept whole)."""
    apps = []
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.split(",")]
        if len(cells) < 4 or not cells[1].isdigit():
            continue
        apps.append((cells[0], ComputeApp(int(cells[1]), ", ".join(cells[2:-1]), _number(cells[-1]))))
    return apps
