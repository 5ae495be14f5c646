"""GPU facts and the GPU checks of doctor on a real NVIDIA host, through a local session.

Skipped where no GPU is present (our CI and lab machines). Run on the borrowed H200:
`python3 -m pytest -q -m gpu tests/gpu -s`.
"""
import shutil
import subprocess

import pytest

from gpufleet import facts
from gpufleet.remote import LocalSession


def has_gpu() -> bool:
    smi = shutil.which("nvidia-smi")
    return bool(smi) and subprocess.run([smi, "-L"], capture_output=True).returncode == 0


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not has_gpu(), reason="no NVIDIA GPU here")]


def test_facts_see_the_gpus_driver_and_cuda_through_a_local_session():
    f = facts.gather(LocalSession("local"), facts.ProbeRequest())
    print(f"\nGPU facts: {len(f.gpus)} GPU(s): {[ (g.index, g.name, g.memory_total_mib, g.compute_cap) for g in f.gpus]}"
          f", driver {f.gpu_driver}, CUDA {f.gpu_cuda}, source {f.gpu_source}, os {f.os.pretty_name}")
    assert f.has_gpu and f.gpu_source == "nvidia-smi"
    assert f.gpu_driver and f.gpu_cuda
    listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout
    assert len(f.gpus) == listed.count("GPU ") - listed.count("MIG ")


def test_doctor_local_gpu_checks_pass():
    from tasks.doctor import FAIL, PASS, local_checks
    checks = local_checks()
    for check in checks:
        print(f"{check.name:16} {check.status:8} {check.detail}")
    by_name = {c.name: c for c in checks}
    assert by_name["gpu"].status == PASS
    assert by_name["torch.cuda"].status == PASS, by_name["torch.cuda"].detail
    assert "is_available() = True" in by_name["torch.cuda"].detail
    assert all(c.status != FAIL for c in checks if c.name in ("gpu", "torch.cuda"))
