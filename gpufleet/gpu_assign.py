"""Which GPUs each container of a server gets, by UUID, and the record on the server that keeps it so.

A container's `gpus` is "auto", "all", "none", a list of indices or GPU/MIG UUIDs, or a count.  Indices
and counts are resolved to UUIDs from the server's facts; what each container holds is recorded on the
server (GPU_RECORD, a folder no container can see), so that a count stays on the same GPUs from run to
run and an index list stays on the GPUs it first named when a reboot renumbers them.  Everything here
is pure: the facts and the record come in, the assignment (or a refusal naming what the server has)
comes out.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from gpufleet.errors import FleetError, InputError
from gpufleet.records import record_member
from gpufleet.gpu import Gpu, MigDevice

GPU_RECORD = "/var/lib/gpufleet/gpus.json"


class GpuAssignmentError(FleetError):
    """A container's `gpus` cannot be met on this server (a clash, a GPU it has not, too few free)."""


@dataclass(frozen=True)
class Device:
    """A GPU or a MIG instance a container can be given."""
    uuid: str
    index: int           # the GPU's index (a MIG instance's: its GPU's)
    name: str            # the model
    mig: str = ""        # the MIG profile, "" for a whole GPU

    def __str__(self) -> str:
        where = f"GPU {self.index}" + (f" MIG {self.mig}" if self.mig else "")
        return f"{where} {self.name} {self.uuid}"


def devices(gpus: list[Gpu], migs: list[MigDevice] = ()) -> list[Device]:
    """Pure: every device a container can be given, whole GPUs first, by index."""
    whole = [Device(g.uuid, g.index, g.name) for g in sorted(gpus, key=lambda g: g.index) if g.uuid]
    names = {g.index: g.name for g in gpus}
    return whole + [Device(m.uuid, m.gpu_index, names.get(m.gpu_index, "?"), m.profile) for m in migs]


def parse_record(text: str) -> dict[str, dict]:
    """Pure: the record's containers, {name: {"asked": ..., "uuids": [...], "since": seconds}}; an empty or
    missing record is {}."""
    if not text.strip():
        return {}
    left = "; move it aside and run again"
    containers = record_member(text, GPU_RECORD, "containers", dict, left)
    for name, held in containers.items():
        if not (isinstance(held, dict) and isinstance(held.get("uuids"), list)):
            raise InputError(f"{GPU_RECORD}: containers.{name} has no list of GPU UUIDs{left}")
    return containers


def render_record(holds: dict[str, dict]) -> bytes:
    """Pure: the record's text, stable (sorted) so that an unchanged assignment is an unchanged file."""
    return (json.dumps({"containers": holds}, indent=1, sort_keys=True) + "\n").encode()


def new_record(old: dict[str, dict], assigned: dict[str, tuple], asked: dict[str, object], now: int,
               keep: set[str] = frozenset()) -> dict[str, dict]:
    """Pure: the record after this run: each container's UUIDs and since when it holds them (kept when
    they did not change); containers in `keep` (on the server, not in the inventory) stay as they were."""
    record = {name: dict(old[name]) for name in keep if name in old}
    for name, uuids in assigned.items():
        before = old.get(name) or {}
        since = before.get("since", now) if list(before.get("uuids") or []) == list(uuids) else now
        record[name] = {"asked": asked[name], "uuids": list(uuids), "since": since}
    return record


def _shown(value) -> str:
    return json.dumps(value) if not isinstance(value, str) else repr(value)


def _inventory(all_devices: list[Device]) -> str:
    return "; ".join(str(d) for d in all_devices) or "no GPU"


def _overlap(a: Device, b: Device) -> bool:
    """The same device, or a MIG instance and the whole GPU it is part of."""
    if a.uuid == b.uuid:
        return True
    return a.index == b.index and bool(a.mig) != bool(b.mig)


def resolve(asked: dict[str, object], all_devices: list[Device], record: dict[str, dict],
            shared: set[str] = frozenset(), host_shared: bool = False,
            held_elsewhere: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
    """Pure: {container: sorted UUIDs} for the containers whose `gpus` is "all", a list or a count
    ("auto" resolved to "all" or "none" before; "none" left out).

    `record` is the server's record (parse_record), `shared` the containers with share_gpus = true,
    `host_shared` the host's share_gpus, `held_elsewhere` what containers on the server that the inventory
    does not name hold.  Raises GpuAssignmentError naming the container(s) and what the server has."""
    by_uuid = {d.uuid: d for d in all_devices}
    whole = [d for d in all_devices if not d.mig]
    by_index = {d.index: d for d in whole}
    assigned: dict[str, list[str]] = {}
    for name, value in sorted(asked.items()):
        if value == "all":
            assigned[name] = [d.uuid for d in whole]
        elif isinstance(value, list):
            assigned[name] = _listed(name, value, by_uuid, by_index, record.get(name), all_devices)
    held = {name: uuids for name, uuids in (held_elsewhere or {}).items() if name not in asked}
    for name, value in sorted(asked.items()):
        if isinstance(value, int) and not isinstance(value, bool):
            taken = [by_uuid[u] for other, uuids in {**held, **assigned}.items() for u in uuids if u in by_uuid]
            free = [d for d in whole if not any(_overlap(d, t) for t in taken)
                    and not any(m.mig and m.index == d.index for m in all_devices)]
            mine = [d for d in free if d.uuid in ((record.get(name) or {}).get("uuids") or [])]
            pick = (mine + [d for d in free if d not in mine])[:value]
            if len(pick) < value:
                holders = "; ".join(f"{other} holds {', '.join(f'GPU {by_uuid[u].index}' for u in uuids if u in by_uuid)}"
                                    for other, uuids in sorted({**held, **assigned}.items()) if uuids)
                raise GpuAssignmentError(
                    f"container {name}: gpus = {value} but only {len(free)} GPU(s) are free on this server "
                    f"(it has {_inventory(all_devices)}" + (f"; {holders}" if holders else "") + ")")
            assigned[name] = [d.uuid for d in pick]
    _check_clashes({**held, **assigned}, asked, by_uuid, shared, host_shared)
    return {name: sorted(uuids) for name, uuids in assigned.items()}


def _listed(name: str, value: list, by_uuid: dict[str, Device], by_index: dict[int, Device],
            before: dict | None, all_devices: list[Device]) -> list[str]:
    """The UUIDs a list names: the recorded ones while the list is unchanged and they are all still there
    (a reboot that renumbers the GPUs moves no one), else each index or UUID looked up now."""
    if before and before.get("asked") == value:
        recorded = list(before.get("uuids") or [])
        gone = [u for u in recorded if u not in by_uuid]
        if not gone:
            return recorded
        if any(isinstance(item, int) for item in value):
            raise GpuAssignmentError(
                f"container {name}: gpus = {_shown(value)} held {', '.join(gone)}, which this server no longer has "
                f"(it has {_inventory(all_devices)}); name the GPUs it should get now")
    uuids = []
    for item in value:
        device = by_index.get(item) if isinstance(item, int) else by_uuid.get(item)
        if device is None:
            what = f"GPU {item}" if isinstance(item, int) else item
            raise GpuAssignmentError(f"container {name}: gpus = {_shown(value)} names {what}, which this server "
                                     f"does not have (it has {_inventory(all_devices)})")
        uuids.append(device.uuid)
    return uuids


def _check_clashes(assigned: dict[str, list[str]], asked: dict[str, object], by_uuid: dict[str, Device],
                   shared: set[str], host_shared: bool) -> None:
    if host_shared:
        return
    names = sorted(assigned)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if a in shared or b in shared or (asked.get(a) == "all" and asked.get(b) == "all"):
                continue  # two containers with all GPUs share them, as one container per server always did
            for ua in assigned[a]:
                for ub in assigned[b]:
                    da, db = by_uuid.get(ua), by_uuid.get(ub)
                    if da and db and _overlap(da, db):
                        raise GpuAssignmentError(
                            f"containers {a} and {b} would both hold {da if da.uuid == db.uuid else f'{da} / {db}'}: "
                            "give them different GPUs, or set share_gpus = true on one of them or on the host")


def describe(uuids, all_devices: list[Device]) -> str:
    """Pure: `GPU 0 NVIDIA H200 GPU-…, GPU 1 …` for the plan and show-host."""
    by_uuid = {d.uuid: d for d in all_devices}
    return ", ".join(str(by_uuid[u]) if u in by_uuid else f"{u} (not on the server)" for u in uuids)
