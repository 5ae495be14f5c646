"""ops.gpus from (derived) captures of an 8x H200 server: a row per GPU with the container holding it, its
processes mapped to containers by host PID, idle time from the server's idle record, and the flags; the table
cells and the JSON; the one command it runs, run on this machine against the stand-in nvidia-smi."""
import json
import os
import shutil
import time
from pathlib import Path

import pytest

from gpufleet import gpu, gpu_assign, gpu_view
from gpufleet.remote import LocalSession
from tests.unit.test_facts import section

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "gpu"
EIGHT = FIXTURES / "derived-8x-h200"  # derived from the real one-H200 captures: see its README.md
U = [g.uuid for g in gpu.parse_query_gpu((EIGHT / "query-gpu.csv").read_text())]
NOW = 1_765_000_000
TOP = (FIXTURES / "docker-top-eo-pid.txt").read_text()  # real `docker top NAME -eo pid`: 27608, 27636, 27637


def readfile(body: bytes | None) -> str:
    import base64
    return "absent\n" if body is None else "644 root root\n" + base64.b64encode(body).decode() + "\n"


def sections(apps: str, record: dict, idle: dict | None, tops: list[str]) -> dict:
    text = (section("now", f"{NOW}\n") + section("status", (EIGHT / "status.csv").read_text())
            + section("apps", apps) + section("record", readfile(gpu_assign.render_record(record)))
            + section("idle", readfile(json.dumps(idle).encode() if idle is not None else None))
            + "".join(section(f"top:{i}", top) for i, top in enumerate(tops)))
    return gpu_view.read_sections(text)


RECORD = {"alice": {"asked": [0, 1], "uuids": U[:2], "since": 1}, "bob": {"asked": 2, "uuids": U[2:4], "since": 1}}
# the captured torch process (pid 444 on GPU 0) moved to a pid of the real docker top capture
APPS = (EIGHT / "compute-apps.csv").read_text().replace(", 444,", ", 27636,")


def test_rows_map_processes_by_host_pid_and_say_who_holds_each_gpu():
    rows, idle, why = gpu_view.gpu_rows("gpu8", sections(APPS, RECORD, {}, [TOP, "PID\n"]), ["alice", "bob"],
                                        None, 3600)
    assert why == "" and len(rows) == 8
    first = rows[0]
    assert first == {"server": "gpu8", "index": 0, "uuid": U[0], "model": "NVIDIA H200", "memory_used_mib": 1643,
                     "memory_total_mib": 143771, "utilization": 0, "temperature": 38, "containers": ["alice"],
                     "users": None, "processes": [{"pid": 27636, "name": "python3", "used_mib": 1634,
                                                   "container": "alice"}],
                     "idle_seconds": None, "flags": []}
    assert [r["containers"] for r in rows] == [["alice"], ["alice"], ["bob"], ["bob"], [], [], [], []]
    assert idle == {u: NOW for u in U[1:]}  # GPU 0 is busy: a process runs on it
    json.dumps(rows)  # the --json recap carries them as they are


def test_a_process_on_a_gpu_its_container_does_not_hold_is_flagged():
    rows, _, _ = gpu_view.gpu_rows("gpu8", sections(APPS, RECORD, {}, ["PID\n", TOP]), ["alice", "bob"], None, 3600)
    assert rows[0]["processes"][0]["container"] == "bob"
    assert rows[0]["flags"] == ["pid 27636 of bob runs on a GPU bob does not hold"]


def test_a_held_gpu_idle_for_long_is_flagged_and_idle_time_comes_from_the_record():
    idle = {U[2]: NOW - 7200, U[3]: NOW - 60, U[0]: NOW - 99999}
    rows, kept, _ = gpu_view.gpu_rows("gpu8", sections(APPS, RECORD, idle, [TOP, "PID\n"]), ["alice", "bob"],
                                      None, 3600)
    assert [r["idle_seconds"] for r in rows[:5]] == [None, 0, 7200, 60, 0]
    assert rows[2]["flags"] == ["held by bob but idle for 2h0m"]
    assert rows[3]["flags"] == [] and rows[4]["flags"] == []  # idle but short, idle but no one holds it
    assert kept[U[2]] == NOW - 7200 and U[0] not in kept  # busy again: its idle time starts over


def test_users_column_where_the_inventory_names_people():
    rows, _, _ = gpu_view.gpu_rows("gpu8", sections("", RECORD, {}, ["PID\n", "PID\n"]), ["alice", "bob"],
                                   {"alice": ["ann", "al"], "bob": []}, 3600)
    assert [r["users"] for r in rows[:3]] == [["al", "ann"], ["al", "ann"], []]
    assert gpu_view.cells(rows[0])[7] == "al, ann" and gpu_view.cells(rows[2])[7] == "-"


def test_table_cells():
    rows, _, _ = gpu_view.gpu_rows("gpu8", sections(APPS, RECORD, {U[2]: NOW - 7200}, [TOP, "PID\n"]),
                                   ["alice", "bob"], None, 3600)
    assert gpu_view.cells(rows[0]) == ["gpu8", "0", "NVIDIA H200", "1643 / 143771 MiB", "0%", "38C", "alice", "-",
                                       "27636 python3 (alice)", "busy", ""]
    assert gpu_view.cells(rows[2])[-2:] == ["2h0m", "held by bob but idle for 2h0m"]
    assert len(gpu_view.cells(rows[0])) == len(gpu_view.COLUMNS)


@pytest.mark.parametrize("rc,text,why", [
    (127, "sh: 1: nvidia-smi: not found", "no nvidia-smi on this server"),
    (9, (FIXTURES / "fail-driver-not-loaded.txt").read_text(),
     "nvidia-smi failed: nvidia-smi cannot talk to the NVIDIA driver (not loaded, or a version mismatch)"),
])
def test_no_rows_and_why_without_a_working_nvidia_smi(rc, text, why):
    found = gpu_view.read_sections(section("now", f"{NOW}\n") + section("status", text, rc))
    assert gpu_view.gpu_rows("gpu8", found, [], None, 3600) == ([], {}, why)


def test_the_one_command_on_this_machine_with_the_stand_in_nvidia_smi(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shutil.copy(EIGHT / "nvidia-smi.sh", bin_dir / "nvidia-smi")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_GPU_DIR", str(EIGHT))
    result = LocalSession().run(gpu_view.gpus_script(["no-such-container"]), check=False)
    found = gpu_view.read_sections(result.stdout)
    rows, _, why = gpu_view.gpu_rows("here", found, ["no-such-container"], None, 3600)
    assert why == "" and [r["uuid"] for r in rows] == U
    assert rows[0]["processes"] == [{"pid": 444, "name": "python3", "used_mib": 1634, "container": None}]
    assert abs(int(found["now"][1]) - time.time()) < 60
