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


def parse_query_gpu(text: str) -> list[Gpu]:
    """Pure: `nvidia-smi --query-gpu=index,name,uuid,driver_version,memory.total,compute_cap,pci.bus_id
    --format=csv[,noheader][,nounits]`.  Without a header the fields are taken in that order; with one
    (`--format=csv`) they are found by name, so a query with other or more fields still parses."""
    columns = {name: i for i, name in enumerate(QUERY_COLUMNS)}
    gpus = []
    for row in csv.reader(io.StringIO(text.strip())):
        cells = [c.strip() for c in row]
        names = [_query_column(c) for c in cells]
        if "index" in names:
            columns = {name: i for i, name in enumerate(names)}
            continue
        values = {name: cells[i] if i < len(cells) else "" for name, i in columns.items()}
        if len(cells) < 2 or not values.get("index", "").isdigit():
            continue  # an error line, or a header without an index column
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
    columns = {name: i for i, name in enumerate(STATUS_COLUMNS)}
    rows = []
    for row in csv.reader(io.StringIO(text.strip())):
        cells = [c.strip() for c in row]
        names = [_query_column(c) for c in cells]
        if "index" in names:
            columns = {name: i for i, name in enumerate(names)}
            continue
        value = {name: cells[i] if i < len(cells) else "" for name, i in columns.items()}
        if len(cells) < 2 or not value.get("index", "").isdigit():
            continue
        rows.append(GpuStatus(int(value["index"]), value.get("uuid", ""), value.get("name", ""),
                              _number(value.get("memory.used", "")), _number(value.get("memory.total", "")),
                              _number(value.get("utilization.gpu", "")), _number(value.get("temperature.gpu", "")),
                              value.get("compute_cap", "")))
    return rows


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
