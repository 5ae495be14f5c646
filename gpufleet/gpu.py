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
