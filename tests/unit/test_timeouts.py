"""Nothing hangs forever: each remote command has its class's limit (hosts.toml), and a hung nvidia-smi
fails the GPU facts, not the probe."""
import os
import time

import pytest

from gpufleet import facts, inventory
from gpufleet.errors import CommandTimedOut
from gpufleet.remote import LocalSession

BASE = """
[defaults]
install_timeout = 3600
[groups.slow]
probe_timeout = 300
[hosts.gpu1]
address = "10.0.0.1"
groups = ["slow"]
command_timeout = 60
[hosts.gpu2]
address = "10.0.0.2"
"""

# host → {command class: seconds}: built-in defaults < [defaults] < group < host
TIMEOUTS = [
    ("gpu1", {"probe": 300, "command": 60, "install": 3600, "copy": 43200}),
    ("gpu2", {"probe": 120, "command": 600, "install": 3600, "copy": 43200}),
]


@pytest.mark.parametrize("host,expected", TIMEOUTS, ids=[row[0] for row in TIMEOUTS])
def test_timeouts_layer_like_every_setting(host, expected):
    assert inventory.loads(BASE).host(host).timeouts == expected


def test_a_local_command_past_its_limit_is_stopped_and_named():
    session = LocalSession("ws")
    session.timeouts["install"] = 1
    started = time.monotonic()
    with pytest.raises(CommandTimedOut) as err:
        session.run(["sh", "-c", "sleep 30; echo done"], check=False, kind="install")
    assert time.monotonic() - started < 10
    assert str(err.value) == ("`sh -c 'sleep 30; echo done'` hung: still running after 1s, stopped "
                              "(the limit is install_timeout in hosts.toml)")


@pytest.mark.skipif(os.geteuid() != 0, reason="the probe runs as root")
def test_a_hung_nvidia_smi_fails_the_gpu_fact_and_the_probe_finishes(tmp_path, monkeypatch):
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexec sleep 600\n")  # a wedged GPU: nvidia-smi never answers
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    monkeypatch.setattr(facts, "NVIDIA_SMI_TIMEOUT", 2)
    started = time.monotonic()
    found = facts.gather(LocalSession("ws"), facts.ProbeRequest())
    elapsed = time.monotonic() - started
    assert elapsed < 20, f"the probe took {elapsed:.0f}s"
    assert "nvidia-smi hung: no answer within 2s, stopped" in found.gpu_source, found.gpu_source
    assert found.os.id and found.mem_total_mb > 0  # the other facts are there
