"""Secret container env values reach the container and nothing else: not the output, the recap JSON, the
command logs, the spec label, a dry run's diff or show-host."""
import json
import stat
import tomllib

import pytest

from tests.integration.helpers import inventory_variant, sh

SECRET, OTHER = "hf_s3cr3tVALUE-1234", "hf_0therVALUE-5678"


def vault(image, value):
    return ("\n[hosts.gpu1.containers.vault]\n"
            f"image = {json.dumps(image)}\n"
            "ssh_port = 2223\n"
            'ulimit_nofile = "20000:20000"\n'
            f'env = {{ HF_TOKEN = {{ secret = "{value}" }}, MODE = "dev" }}\n')


@pytest.fixture
def with_vault(lab, bootstrapped, tmp_path):
    """An inventory with one more container on gpu1 whose HF_TOKEN is secret; removed afterwards."""
    assert bootstrapped.returncode == 0, bootstrapped.stdout[-2000:]
    image = tomllib.loads(lab.inventory_path.read_text())["groups"]["servers"]["containers"]["dev"]["image"]
    yield lambda name, value: inventory_variant(lab, tmp_path, name, append=vault(image, value))
    sh(lab, "gpu1", "docker rm -f vault >/dev/null 2>&1; rm -rf /var/lib/gpufleet/containers/vault")


def everything_written(fab) -> str:
    """Every file the runs wrote under their working directory (logs, recap JSON, failed-hosts)."""
    return "\n".join(p.read_text(errors="replace") for p in fab.cwd.rglob("*") if p.is_file())


def test_a_secret_env_value_reaches_the_container_and_nothing_else(lab, fab, with_vault):
    inventory = with_vault("secret.toml", SECRET)
    first = fab("-H", "gpu1", "containers.up", inventory=inventory)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-2000:]
    assert "run container vault" in first.stdout
    # the container has it
    assert sh(lab, "gpu1", "docker exec vault printenv HF_TOKEN")[1] == SECRET
    assert sh(lab, "gpu1", "docker exec vault printenv MODE")[1] == "dev"
    # its label keeps a hash only
    label = json.loads(sh(lab, "gpu1", "docker inspect -f '{{index .Config.Labels \"gpufleet.spec\"}}' vault")[1])
    assert label["env"]["MODE"] == "dev" and label["env"]["HF_TOKEN"].startswith("secret:sha256:")
    assert SECRET not in json.dumps(label)

    again = fab("-H", "gpu1", "containers.up", inventory=inventory)
    assert again.returncode == 0 and again.hosts["gpu1"]["changed"] == 0, again.stdout[-3000:]

    changed = with_vault("other.toml", OTHER)
    dry = fab("-H", "gpu1", "containers.up", "--dry-run", inventory=changed)
    assert dry.returncode == 0 and "would re-create container vault (env:" in dry.stdout, dry.stdout[-3000:]
    shown = fab("show-host", "gpu1", inventory=changed)
    assert "containers.vault.env" in shown.stdout and "HF_TOKEN = *****" in shown.stdout, shown.stdout

    for result in (first, again, dry, shown):
        for value in (SECRET, OTHER):
            assert value not in result.stdout + result.stderr
    written = everything_written(fab)
    assert "HF_TOKEN" in written  # the logs hold the probe's `docker inspect` of vault, masked
    assert SECRET not in written and OTHER not in written


def test_logs_are_readable_by_their_owner_only(fab, bootstrapped):
    logs = fab.cwd / ".gpufleet" / "logs"
    assert stat.S_IMODE(logs.stat().st_mode) == 0o700
    runs = [p for p in logs.iterdir() if p.is_dir()]
    assert runs and all(stat.S_IMODE(p.stat().st_mode) == 0o700 for p in runs)
    files = [f for p in runs for f in p.iterdir()]
    assert files and all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
