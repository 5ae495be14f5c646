"""`ops.gpus`: every GPU of a server, who holds it, what runs on it and how long it has been idle.

One command per server (gpus_script) prints its sections: the GPUs' live numbers and their compute
processes from the server's nvidia-smi, the server's record of which container holds which GPU
(gpu_assign.GPU_RECORD), the idle record (IDLE_RECORD) and the host PIDs of each container's processes.
A process is mapped to its container by host PID, as ops.rm's guard does.  How long a GPU has been idle
is kept on the server in IDLE_RECORD: the server's time when ops.gpus first saw it idle (no process, 0 %
utilisation), dropped when it is seen busy; so "idle" reads "at least this long", from the first look on.
Everything but gpus_script's run is pure.
"""
from __future__ import annotations

import json
import shlex

from gpufleet import gpu
from gpufleet.facts import NVIDIA_SMI_TIMEOUT, PROBE_FUNCTIONS, RemoteFile, parse_file, split_sections
from gpufleet.gpu_assign import GPU_RECORD, parse_record
from gpufleet.remote import Script

IDLE_RECORD = "/var/lib/gpufleet/gpu-idle.json"


def gpus_script(containers: list[str]) -> Script:
    """The one command ops.gpus runs on a server: its sections, in the probe's out-of-band framing."""
    smi = f"timeout -k 5 {NVIDIA_SMI_TIMEOUT}"
    lines = ["sec now date +%s",
             f"sec status {smi} {shlex.join(gpu.GPU_STATUS)}",
             f"sec apps {smi} {shlex.join(gpu.GPU_APPS)}",
             f"sec record readfile {GPU_RECORD}",
             f"sec idle readfile {IDLE_RECORD}",
             *(f"sec top:{i} {shlex.join(['docker', 'top', name, '-eo', 'pid'])}" for i, name in enumerate(containers))]
    return Script(PROBE_FUNCTIONS + "\n".join(lines) + "\n")


def parse_idle(text: str) -> dict[str, int]:
    """Pure: the idle record, {GPU UUID: server time it was first seen idle}; unreadable counts as empty."""
    try:
        data = json.loads(text) if text.strip() else {}
        return {str(k): int(v) for k, v in data.items()} if isinstance(data, dict) else {}
    except (ValueError, TypeError):
        return {}


def next_idle(status: list[gpu.GpuStatus], apps: list[tuple[str, gpu.ComputeApp]], old: dict[str, int],
              now: int) -> dict[str, int]:
    """Pure: the idle record after this look: a GPU with a process or any utilisation is busy (dropped);
    an idle one keeps the time it was first seen idle."""
    busy = {uuid for uuid, _ in apps} | {s.uuid for s in status if s.utilization}
    return {s.uuid: old.get(s.uuid, now) for s in status if s.uuid not in busy}


def duration(seconds: int) -> str:
    """Pure: 90 → '1m', 7200 → '2h0m', 3 days → '3d0h'."""
    if seconds >= 86400:
        return f"{seconds // 86400}d{seconds % 86400 // 3600}h"
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60}m"
    return f"{seconds // 60}m"


def gpu_rows(server: str, sections: dict[str, tuple[int, str]], containers: list[str],
             users: dict[str, list[str]] | None, idle_flag_seconds: int) -> tuple[list[dict], dict[str, int], str]:
    """Pure: (a row per GPU, the idle record to keep, why there are no rows) from gpus_script's sections.

    `containers` are the names gpus_script was given (the inventory's, then the record's others); `users`
    maps a container to its people where the inventory names them (None: it does not)."""
    rc, text = sections.get("status", (1, "no answer"))
    if rc != 0:
        reason = gpu.classify_smi_failure(text)
        if rc == 127 or "not found" in text:
            return [], {}, "no nvidia-smi on this server"
        return [], {}, f"nvidia-smi failed: {reason or text.strip()[-200:] or f'exit {rc}'}"
    status = gpu.parse_gpu_status(text)
    apps = gpu.parse_gpu_apps(sections.get("apps", (1, ""))[1]) if sections.get("apps", (1, ""))[0] == 0 else []
    now = int(sections.get("now", (0, "0"))[1].strip() or 0)
    holds = {name: held["uuids"] for name, held in parse_record(_file(sections, "record").text).items()}
    pids = {}
    for i, name in enumerate(containers):
        top = sections.get(f"top:{i}", (1, ""))
        found = gpu.parse_top_pids(top[1]) if top[0] == 0 else None
        if found:
            pids[name] = found
    idle = next_idle(status, apps, parse_idle(_file(sections, "idle").text), now)
    rows = []
    for card in status:
        holders = sorted(name for name, uuids in holds.items() if card.uuid in uuids)
        processes, flags = [], []
        for uuid, app in apps:
            if uuid != card.uuid:
                continue
            owner = next((name for name, found in sorted(pids.items()) if app.pid in found), None)
            processes.append({"pid": app.pid, "name": app.name, "used_mib": app.used_mib, "container": owner})
            if owner and owner not in holders:
                flags.append(f"pid {app.pid} of {owner} runs on a GPU {owner} does not hold")
        idle_for = now - idle[card.uuid] if card.uuid in idle else None
        if holders and idle_for is not None and idle_for >= idle_flag_seconds:
            flags.append(f"held by {', '.join(holders)} but idle for {duration(idle_for)}")
        rows.append({
            "server": server, "index": card.index, "uuid": card.uuid, "model": card.name,
            "memory_used_mib": card.memory_used_mib, "memory_total_mib": card.memory_total_mib,
            "utilization": card.utilization, "temperature": card.temperature,
            "containers": holders,
            "users": None if users is None else sorted({u for name in holders for u in users.get(name, [])}),
            "processes": processes, "idle_seconds": idle_for, "flags": flags})
    return rows, idle, ""


def _file(sections: dict[str, tuple[int, str]], name: str) -> RemoteFile:
    return parse_file(sections.get(name, (1, "absent"))[1])


def read_sections(text: str) -> dict[str, tuple[int, str]]:
    """Pure: gpus_script's output, by section (the probe's framing: a line that does not frame fails)."""
    return split_sections(text)


def cells(row: dict) -> list[str]:
    """Pure: a row as the table's cells."""
    def number(value, unit=""):
        return "-" if value is None else f"{value}{unit}"
    memory = f"{number(row['memory_used_mib'])} / {number(row['memory_total_mib'])} MiB"
    processes = ", ".join(f"{p['pid']} {p['name']} ({p['container'] or 'not a managed container'})"
                          for p in row["processes"]) or "-"
    idle = "busy" if row["idle_seconds"] is None else duration(row["idle_seconds"])
    return [row["server"], str(row["index"]), row["model"], memory, number(row["utilization"], "%"),
            number(row["temperature"], "C"), ", ".join(row["containers"]) or "-",
            ", ".join(row["users"]) if row["users"] else "-", processes, idle, "; ".join(row["flags"])]


COLUMNS = ("server", "GPU", "model", "memory used / total", "util", "temp", "container", "users", "processes",
           "idle", "flags")
