"""The lab's pure parts: addresses and roles, and the inventory it writes (no Docker needed)."""
from pathlib import Path

import pytest

from gpufleet import inventory as inv
from lab.common import LabError
from lab.images import IMAGES
from lab.topology import (LAB_IMAGE, SYSTEMD, SYSV, InventoryData, PackageRepos, ServerEntry, plan_members,
                          render_inventory)
from tests.goldens import check_golden

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "lab"
LAB_DIR = Path("/repo/.lab")
DOCKER_FPR, NVIDIA_FPR = "A" * 40, "0123456789ABCDEF0123456789ABCDEF01234567"
REPOS = PackageRepos(docker_mirror="http://10.77.10.5/docker-ce/linux", docker_key_fingerprint=DOCKER_FPR,
                     engines=(("bookworm", "20.10.24"), ("trixie", "26.1.5")),
                     nvidia_mirror="http://10.77.10.5/libnvidia-container", nvidia_key_fingerprint=NVIDIA_FPR,
                     today_engine="29.7.2", today_from="stack")
DATA = InventoryData(
    directory=LAB_DIR, bastion_port=32768, apt_proxy="http://10.77.10.3:3142",
    registry_mirror="http://10.77.10.4:5000", image=LAB_IMAGE,
    servers=(ServerEntry("gpu1", "10.77.10.11", "root", SYSTEMD, "bookworm"),
             ServerEntry("gpu2", "10.77.10.12", "dev", SYSV, "bookworm"),
             ServerEntry("gpu3", "10.77.10.13", "root", SYSTEMD, "trixie"),
             ServerEntry("gpu4", "10.77.10.14", "root", SYSTEMD, "trixie", today=True)),
    repos=REPOS)


def test_inventory_text_is_exactly_the_documented_schema():
    check_golden(GOLDEN / "hosts.toml", render_inventory(DATA).encode())


def test_without_the_nvidia_repo_no_server_asks_for_the_toolkit():
    bare = InventoryData(**{**DATA.__dict__, "repos": PackageRepos(REPOS.docker_mirror, DOCKER_FPR, REPOS.engines,
                                                                   today_engine="28.5.2", today_from="sid")})
    check_golden(GOLDEN / "hosts-without-nvidia.toml", render_inventory(bare).encode())
    inventory = inv.loads(render_inventory(bare), LAB_DIR / "hosts.toml")
    assert {inventory.host(n).nvidia_toolkit for n in ("gpu1", "gpu2", "gpu3", "gpu4")} == {"auto"}
    # without ../shared, gpu4's docker-ce is Debian unstable's docker.io 28.5: the containerd image store goes on
    assert inventory.host("gpu4").daemon_json == {"features": {"containerd-snapshotter": True}}
    assert inventory.host("gpu3").daemon_json == {}


def test_inventory_passes_the_tools_own_validation():
    inventory = inv.loads(render_inventory(DATA), LAB_DIR / "hosts.toml")
    assert [h.name for h in inventory.jump_chain("gpu2")] == ["bastion"]
    gpu1, gpu2, gpu3 = (inventory.host(n) for n in ("gpu1", "gpu2", "gpu3"))
    assert (gpu1.address, gpu1.user, gpu2.user) == ("10.77.10.11", "root", "dev")
    assert gpu2.apt_proxy == "http://10.77.10.3:3142"
    assert gpu2.registry_mirrors == ["http://10.77.10.4:5000"]
    assert gpu2.containers["dev"].image == LAB_IMAGE
    assert inventory.local.identity == LAB_DIR / "id_ed25519"
    # the field: docker-ce from the lab's repo with its key pinned, Debian's docker.io, the toolkit without a GPU
    assert [h.docker_source for h in (gpu1, gpu2, gpu3)] == ["docker-ce", "distro", "docker-ce"]
    assert gpu1.docker_mirror == gpu3.docker_mirror == "http://10.77.10.5/docker-ce/linux"
    assert gpu1.docker_key_fingerprint == DOCKER_FPR
    assert gpu3.nvidia_mirror == "http://10.77.10.5/libnvidia-container"
    assert gpu3.nvidia_key_fingerprint == NVIDIA_FPR
    assert [h.nvidia_toolkit for h in (gpu1, gpu2, gpu3)] == ["auto", "auto", "always"]
    # gpu4: today's stack with its fresh-install defaults (no daemon.json features), data_root on /data
    gpu4 = inventory.host("gpu4")
    assert (gpu4.docker_source, gpu4.nvidia_toolkit, gpu4.daemon_json, gpu4.data_root) == \
        ("docker-ce", "always", {}, "/data/docker")


def test_paths_with_quotes_stay_valid_toml():
    odd = InventoryData(**{**DATA.__dict__, "directory": Path('/tmp/a "quoted" dir')})
    inventory = inv.loads(render_inventory(odd))
    assert inventory.local.identity == Path('/tmp/a "quoted" dir/id_ed25519')


SERVICES = [("bastion", "bastion", ".2", "bookworm"), ("aptproxy", "aptproxy", ".3", "bookworm"),
            ("mirror", "mirror", ".4", "bookworm"), ("pkgmirror", "pkgmirror", ".5", "bookworm")]


@pytest.mark.parametrize("subnet, hosts, servers", [
    ("10.77.10.0/24", 3, [("gpu1", SYSTEMD, ".11", "bookworm"), ("gpu2", SYSV, ".12", "bookworm"),
                          ("gpu3", SYSTEMD, ".13", "trixie")]),
    ("10.77.10.0/24", 4, [("gpu1", SYSTEMD, ".11", "bookworm"), ("gpu2", SYSV, ".12", "bookworm"),
                          ("gpu3", SYSTEMD, ".13", "trixie"), ("gpu4", SYSTEMD, ".14", "trixie", True)]),
    ("172.30.5.0/24", 8, [("gpu1", SYSTEMD, ".11", "bookworm"), ("gpu2", SYSV, ".12", "bookworm"),
                          ("gpu3", SYSTEMD, ".13", "trixie"), ("gpu4", SYSTEMD, ".14", "trixie", True),
                          ("gpu5", SYSTEMD, ".15", "bookworm"), ("gpu6", SYSV, ".16", "bookworm"),
                          ("gpu7", SYSTEMD, ".17", "trixie"), ("gpu8", SYSTEMD, ".18", "trixie", True)]),
])
def test_members_get_fixed_roles_releases_and_addresses(subnet, hosts, servers):
    net = subnet.rsplit(".", 1)[0]
    expected = [(name, role, net + ip, suite, today) for name, role, ip, suite, *today in SERVICES + servers
                for today in [bool(today)]]
    assert [(m.name, m.role, m.ip, m.suite, m.today) for m in plan_members(subnet, hosts)] == expected


@pytest.mark.parametrize("subnet, hosts", [("10.77.10.0/24", 0), ("10.77.10.0/28", 5), ("fd00::/64", 1)])
def test_impossible_shapes_are_refused(subnet, hosts):
    with pytest.raises(LabError):
        plan_members(subnet, hosts)


def test_image_tags_are_versioned_by_their_recipe_and_release():
    tags = [recipe.reference for recipe in IMAGES]
    assert len(set(tags)) == len(tags)
    assert {tag.split(":")[1].split("-")[0] for tag in tags} == {"bookworm", "trixie"}
    assert all(tag.split(":")[1].startswith(f"{recipe.suite}-") for tag, recipe in zip(tags, IMAGES))
