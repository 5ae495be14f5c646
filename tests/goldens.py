"""Golden files: compare rendered output with tests/golden/...; GPUFLEET_UPDATE_GOLDEN=1 rewrites them."""
import os
from pathlib import Path


def check_golden(path: Path, data: bytes) -> None:
    """Assert `data` equals the golden file at `path` (review the diff after an update)."""
    if os.environ.get("GPUFLEET_UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    assert path.exists(), f"{path} is missing: run with GPUFLEET_UPDATE_GOLDEN=1 and review it"
    assert data == path.read_bytes()
