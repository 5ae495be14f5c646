"""Where the images are (issue 19 item 1): the image store from docker info, containerd's root from
`containerd config dump`, the one key of config.toml the tool owns, and the plans of docker.configure
and docker.containerd from facts (no host): a move of containerd's root or a switch of the store on a
host with images is refused unless allow_data_root_migration, never silent."""
import base64
import json
from pathlib import Path

import pytest

from gpufleet import containerd_config, daemon_json, facts, inventory, pending
from gpufleet.containerd_config import CONTAINERD_CONFIG, MARK
from gpufleet.errors import FleetError
from gpufleet.paths import DAEMON_JSON, DAEMON_JSON_KEYS, probe_request
from gpufleet.plan import HostContext
from gpufleet.remote import LocalSession
from tasks import docker, doctor

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
DOCKER = FIXTURES / "docker"
CONTAINERD = FIXTURES / "containerd"
SYSTEM_SOCKET = "/run/containerd/containerd.sock"
SNAPSHOTTER = [["driver-type", "io.containerd.snapshotter.v1"]]


def info(version="29.7.2", store="containerd", address=SYSTEM_SOCKET, images=0, containers=0, root="/data/docker"):
    """docker info as Docker 29 answers it (the fields the plans read)."""
    return {"ServerVersion": version, "DockerRootDir": root, "Images": images, "Containers": containers,
            "ContainersRunning": 0, "Runtimes": {"runc": {}}, "RegistryConfig": {"Mirrors": []},
            "Driver": "overlayfs" if store == "containerd" else "overlay2",
            "DriverStatus": SNAPSHOTTER if store == "containerd" else [["Backing Filesystem", "extfs"]],
            "Containerd": {"Address": address, "Namespaces": {"Containers": "moby", "Plugins": "plugins.moby"}}}


# --- the image store, from docker info ---

def captured(name):
    return json.loads((DOCKER / name).read_text())


STORES = [  # (docker info, kind, system containerd, where the images are with data-root /data/docker)
    (captured("info-20.10-classic.json"), "classic", True, "/data/docker"),
    # the lab's gpu4: docker-ce 29.7.2 with containerd.io 2.1.9's containerd.service, fresh; then classic
    (captured("info-29.7.2-containerd-store.json"), "containerd", True, "/var/lib/containerd"),
    (captured("info-29.7.2-classic-store.json"), "classic", True, "/data/docker"),
    (info(), "containerd", True, "/var/lib/containerd"),
    (info(address="/var/run/docker/containerd/containerd.sock"), "containerd", False,
     "/data/docker/containerd/daemon"),
    (info(address="/run/docker/containerd/containerd.sock"), "containerd", False, "/data/docker/containerd/daemon"),
    (info(store="classic"), "classic", True, "/data/docker"),
    ({**info(), "Containerd": None}, "containerd", True, "/var/lib/containerd"),  # Docker < 27 does not say
]


@pytest.mark.parametrize("docker_info,kind,system,where", STORES)
def test_image_store_from_docker_info(docker_info, kind, system, where):
    store = containerd_config.image_store(docker_info)
    assert (store.kind, store.system_containerd) == (kind, system)
    assert store.images_path("/data/docker", "/var/lib/containerd") == where


DUMPS = [  # captured `containerd config dump` → root
    ("dump-1.6.20-default.toml", 0, "/var/lib/containerd"),
    ("dump-1.6.20-root-moved.toml", 0, "/data/docker/containerd"),
    # the probe merges stderr: containerd's warning about a version-1 config comes first
    ("dump-1.6.20-v1-config-stderr-merged.txt", 0, "/data/docker/containerd"),
    # containerd 2.1.9 (gpu4) writes single-quoted strings, version 3
    ("dump-2.1.9-default.txt", 0, "/var/lib/containerd"),
    ("dump-2.1.9-root-moved.txt", 0, "/data/docker/containerd"),
]


@pytest.mark.parametrize("name,rc,root", DUMPS)
def test_containerd_root_from_config_dump(name, rc, root):
    assert containerd_config.parse_dump_root(rc, (CONTAINERD / name).read_text()) == root


@pytest.mark.parametrize("rc,out", [(127, "sh: 1: containerd: not found"), (1, "containerd: failed to load TOML"),
                                    (0, "")])
def test_no_containerd_root_where_the_dump_did_not_run(rc, out):
    assert containerd_config.parse_dump_root(rc, out) == ""


# --- config.toml: the tool's one key ---

DEBIAN = (CONTAINERD / "config-debian-containerd-1.6.toml").read_text()
OURS = f'root = "/data/docker/containerd"  {MARK}\n'
EDITS = [  # (config.toml, root wanted) → config.toml written
    ("", "/data/docker/containerd", OURS),
    (DEBIAN, "/data/docker/containerd", DEBIAN.replace("version = 2\n", "version = 2\n" + OURS, 1)),
    ('disabled_plugins = ["cri"]\n\n#root = "/var/lib/containerd"\n#[grpc]\n',
     "/data/docker/containerd", 'disabled_plugins = ["cri"]\n\n#root = "/var/lib/containerd"\n#[grpc]\n' + OURS),
    ('root = "/srv/containerd"\nstate = "/run/containerd"\n', "/data/docker/containerd",
     OURS + 'state = "/run/containerd"\n'),  # a root set by hand: the tool owns the key it sets
    ("version = 2", "/data/docker/containerd", "version = 2\n" + OURS),
    ('version = 2\n[plugins]\n  root = "/not/top/level"\n', "/data/docker/containerd",
     'version = 2\n' + OURS + '[plugins]\n  root = "/not/top/level"\n'),
    (OURS.replace("/data/docker", "/old"), "/data/docker/containerd", OURS),
    ("version = 2\n" + OURS, None, "version = 2\n"),  # data_root unset: the tool's line goes
    ('root = "/srv/containerd"\n', None, 'root = "/srv/containerd"\n'),  # not the tool's: kept
    ('root = "/srv/x\\"y"\n', "/d/a\"b", f'root = "/d/a\\"b"  {MARK}\n'),
]


@pytest.mark.parametrize("text,root,expected", EDITS)
def test_config_toml_root(text, root, expected):
    written = containerd_config.set_root(text, root)
    assert written == expected
    assert containerd_config.set_root(written, root) == written  # a second run changes nothing
    if root:
        assert containerd_config.parse(written)["root"] == root


def test_config_toml_as_the_lab_wrote_it_on_containerd_io():
    before = (CONTAINERD / "config-containerd.io-2.1.9.toml").read_text()
    written = (CONTAINERD / "config-containerd.io-2.1.9-root-moved.toml").read_text()
    assert containerd_config.set_root(before, "/data/docker/containerd") == written
    assert containerd_config.set_root(written, None) == before


def test_config_toml_keeps_every_other_byte_and_comes_back():
    written = containerd_config.set_root(DEBIAN, "/data/docker/containerd")
    assert written.replace(OURS, "") == DEBIAN
    assert containerd_config.set_root(written, None) == DEBIAN


# --- docker.containerd's plan, from facts ---

INVENTORY = """
[local]
known_hosts = "/nonexistent/known_hosts"
[hosts.gpu4]
address = "10.0.0.4"
data_root = "/data/docker"
"""
ALLOWED = INVENTORY + "allow_data_root_migration = true\n"
CONTAINERD_IO = '#   Copyright 2018-2022 Docker Inc.\n\ndisabled_plugins = ["cri"]\n\n#root = "/var/lib/containerd"\n'


def readfile(content):
    return "absent" if content is None else "644 root root\n" + base64.b64encode(content.encode()).decode()


def context(inv_text, docker_info, files=None, dump_root="/var/lib/containerd"):
    """A dry-run context whose facts are a probe output with these files (None or left out: absent)."""
    inv = inventory.loads(inv_text)
    ctx = HostContext(inv.host("gpu4"), inv, LocalSession(), dry_run=True)
    request = probe_request(ctx)
    files = files or {}
    text = (facts.frame("os_release", 'ID=debian\nVERSION_ID="12"\nVERSION_CODENAME=bookworm\n')
            + facts.frame("packages", "docker-ce\tii \t5:29.7.2-1~debian.12~bookworm\n")
            + facts.frame("docker_info", json.dumps(docker_info))
            + facts.frame("containerd_root", f'version = 3\nroot = "{dump_root}"\nstate = "/run/containerd"\n')
            + "".join(facts.frame(f"file:{i}", readfile(files.get(path))) for i, path in enumerate(request.files)))
    ctx._facts = facts.parse_probe(text, request)
    return ctx


def test_fresh_containerd_store_moves_containerd_root_into_data_root():
    plan = docker.plan_containerd(context(INVENTORY, info(), {CONTAINERD_CONFIG: CONTAINERD_IO}))
    (action,) = plan.actions
    assert action.summary == (f"update {CONTAINERD_CONFIG} (root = /data/docker/containerd) "
                              "and restart containerd and Docker")
    assert action.diff == (f"--- {CONTAINERD_CONFIG}\n+++ {CONTAINERD_CONFIG}\n@@ -3,3 +3,4 @@\n"
                           ' disabled_plugins = ["cri"]\n \n #root = "/var/lib/containerd"\n' f"+{OURS}")


def test_containerd_root_already_in_data_root_is_ok():
    written = CONTAINERD_IO + OURS
    plan = docker.plan_containerd(context(INVENTORY, info(), {CONTAINERD_CONFIG: written},
                                          dump_root="/data/docker/containerd"))
    assert not plan.actions and plan.reason == "images are under /data/docker/containerd (containerd's root)"


def test_a_config_written_by_a_cut_run_is_applied():
    written = CONTAINERD_IO + OURS
    plan = docker.plan_containerd(context(INVENTORY, info(), {CONTAINERD_CONFIG: written,
                                                              pending.CONTAINERD_RESTART: "written\n"},
                                          dump_root="/data/docker/containerd"))
    (action,) = plan.actions
    assert action.summary.startswith("restart containerd and Docker to apply")


@pytest.mark.parametrize("docker_info,reason", [
    (info(store="classic"), "images are in Docker's classic store, under /data/docker"),
    (info(address="/var/run/docker/containerd/containerd.sock"),
     "dockerd runs its own containerd: images are under /data/docker/containerd/daemon"),
])
def test_nothing_to_move_where_data_root_already_holds_the_images(docker_info, reason):
    plan = docker.plan_containerd(context(INVENTORY, docker_info, {CONTAINERD_CONFIG: CONTAINERD_IO}))
    assert not plan.actions and plan.reason == reason


def test_the_store_the_inventory_picks_decides():
    classic = INVENTORY + 'image_store = "classic"\n'
    plan = docker.plan_containerd(context(classic, info(), {CONTAINERD_CONFIG: CONTAINERD_IO}))
    assert not plan.actions and plan.reason == "images are in Docker's classic store, under /data/docker"
    switching = INVENTORY + 'image_store = "containerd"\n'  # a dry run: docker.configure switches it first
    (action,) = docker.plan_containerd(context(switching, info(store="classic"), {CONTAINERD_CONFIG: CONTAINERD_IO})).actions
    assert action.summary.startswith(f"update {CONTAINERD_CONFIG} (root = /data/docker/containerd)")


def test_a_dry_run_on_a_fresh_server_announces_the_move():
    ctx = context(INVENTORY, info())
    ctx._facts.docker_info = None
    (action,) = docker.plan_containerd(ctx).actions
    assert action.summary == (f"set containerd's root to /data/docker/containerd in {CONTAINERD_CONFIG} once Docker "
                              "runs, where it uses the containerd image store")
    ctx.dry_run = False
    assert docker.plan_containerd(ctx).skip == "Docker is not running yet"


def test_moving_containerd_root_with_images_is_refused_then_copied_when_allowed():
    with pytest.raises(FleetError) as refused:
        docker.plan_containerd(context(INVENTORY, info(images=3, containers=1), {CONTAINERD_CONFIG: CONTAINERD_IO}))
    assert str(refused.value) == (
        "containerd root change /var/lib/containerd -> /data/docker/containerd (the containerd image store) would "
        "hide 3 image(s) and 1 container(s); set allow_data_root_migration = true to copy them over "
        "(nothing was changed)")
    (action,) = docker.plan_containerd(context(ALLOWED, info(images=3), {CONTAINERD_CONFIG: CONTAINERD_IO})).actions
    assert action.summary.startswith("move containerd's data from /var/lib/containerd to /data/docker/containerd")


def test_data_root_unset_takes_the_tools_root_out_again():
    written = CONTAINERD_IO + OURS
    inv = INVENTORY.replace('data_root = "/data/docker"\n', "")
    (action,) = docker.plan_containerd(context(inv, info(), {CONTAINERD_CONFIG: written},
                                               dump_root="/data/docker/containerd")).actions
    assert action.summary.endswith("(root = /var/lib/containerd) and restart containerd and Docker")
    assert f"-{OURS}" in action.diff


def test_broken_config_toml_is_one_line_and_left_alone():
    with pytest.raises(FleetError) as err:
        docker.plan_containerd(context(INVENTORY, info(), {CONTAINERD_CONFIG: 'root = "/x\n'}))
    assert str(err.value).startswith(f"{CONTAINERD_CONFIG}: ") and "\n" not in str(err.value)


# --- the store the inventory picks: daemon.json's features ---

def configure(inv_text, docker_info, daemon=None, record=None):
    return docker.plan_configure(context(inv_text, docker_info, {DAEMON_JSON: daemon, DAEMON_JSON_KEYS: record}))


def test_image_store_is_a_feature_flag_of_daemon_json_and_other_flags_stay():
    daemon = json.dumps({"features": {"cdi": True}})  # nvidia-ctk's
    update, record = configure(INVENTORY + 'image_store = "classic"\n', info(), daemon).actions
    assert update.diff == '+ features.containerd-snapshotter: false\n+ data-root: "/data/docker"\n'
    assert '["features", "containerd-snapshotter"]' in record.diff
    merged = daemon_json.merge(json.loads(daemon), docker.wanted_daemon_keys(
        context(INVENTORY + 'image_store = "classic"\n', info())))
    assert merged["features"] == {"cdi": True, "containerd-snapshotter": False}


def test_switching_the_store_with_images_is_refused_then_warned():
    with pytest.raises(FleetError) as refused:
        configure(INVENTORY + 'image_store = "classic"\n', info(images=2))
    assert str(refused.value) == (
        "image store change containerd -> classic: 2 image(s) and 0 container(s) stay in the containerd store, "
        "not copied: images in one store are invisible in the other; set allow_data_root_migration = true to "
        "switch anyway (nothing was changed)")
    update = configure(ALLOWED + 'image_store = "classic"\n', info(images=2)).actions[0]
    assert "stay in the containerd store" in update.warning and "image_store = 'containerd' shows them" in update.warning


def test_the_engines_own_store_and_a_store_already_in_use_are_no_switch():
    converged = json.dumps({"data-root": "/data/docker"})
    assert not configure(INVENTORY, info(images=2), converged, daemon_json.render_owned([("data-root",)])).actions
    written = json.dumps({"data-root": "/data/docker", "features": {"containerd-snapshotter": True}})
    owned = daemon_json.render_owned([("data-root",), ("features", "containerd-snapshotter")])
    assert not configure(INVENTORY + 'image_store = "containerd"\n', info(images=2), written, owned).actions


def test_containerd_store_needs_docker_24():
    with pytest.raises(FleetError, match=r"image_store = 'containerd' needs Docker 24 or newer; this host runs 20\.10"):
        configure(INVENTORY + 'image_store = "containerd"\n', info(version="20.10.24", store="classic"))


def test_docker_info_shows_whether_the_store_was_applied():
    config = {"features": {"containerd-snapshotter": False}}
    assert docker.docker_info_differences(info(), config) == ["image store is containerd, not classic"]
    assert docker.docker_info_differences(info(store="classic"), config) == []


@pytest.mark.parametrize("features,problem", [
    ({"containerd-snapshotter": "no"}, "features.containerd-snapshotter must be true or false"),
    ([], "features must be an object"),
])
def test_daemon_json_features_schema(features, problem):
    assert daemon_json.check_schema({"features": features}) == [problem]


# --- doctor: where the images really are, and how full that disk is ---

@pytest.mark.parametrize("docker_info,dump_root,status,detail", [
    (info(), "/var/lib/containerd", doctor.FAIL,
     "in /var/lib/containerd (containerd store, under containerd's root), not in data_root /data/docker"),
    (info(), "/data/docker/containerd", doctor.PASS,
     "in /data/docker/containerd (containerd store, under containerd's root)"),
    (info(store="classic"), "/var/lib/containerd", doctor.PASS, "in /data/docker (classic store, under data-root)"),
])
def test_doctor_says_where_the_images_are(docker_info, dump_root, status, detail):
    check = doctor.images_check(context(INVENTORY, docker_info, dump_root=dump_root))
    assert (check.status, check.detail) == (status, detail)


def test_df_line():
    out = ("Filesystem     1048576-blocks  Used Available Capacity Mounted on\n"
           "/dev/nvme1n1          3755900 12034   3552642       1% /data\n")
    assert doctor.parse_df_line(out) == (3755900, 3552642, "1%", "/data")
    assert doctor.parse_df_line("df: /nope: No such file or directory\n") is None


# --- a data-root move leaves containerd's root inside it to docker.containerd ---

def test_the_data_root_copy_leaves_containerd_root_to_its_own_move(tmp_path):
    old, new = tmp_path / "old root", tmp_path / "new root"
    (old / "overlay2" / "l1").mkdir(parents=True)
    (old / "overlay2" / "l1" / "blob").write_bytes(b"x" * 1000)
    (old / "overlay2" / "hard").hardlink_to(old / "overlay2" / "l1" / "blob")
    (old / ".hidden").write_text("kept")
    (old / "containerd" / "io.containerd.content.v1.content").mkdir(parents=True)
    result = LocalSession("ws").run(docker.copy_script(str(old), str(new), stop="true", skip="containerd"),
                                    timeout=60, check=False)
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in new.iterdir()) == [".hidden", "overlay2"]
    assert (new / "overlay2" / "l1" / "blob").stat().st_ino == (new / "overlay2" / "hard").stat().st_ino


@pytest.mark.parametrize("dump_root,docker_info,skip", [
    ("/data/a/containerd", info(root="/data/a"), "containerd"),
    ("/var/lib/containerd", info(root="/var/lib/docker"), ""),
    ("/data/a/containerd", info(root="/data/a", address="/var/run/docker/containerd/containerd.sock"), ""),
    ("/data/a/x/containerd", info(root="/data/a"), ""),
    ("/data/ab", info(root="/data/a"), ""),
])
def test_which_entry_of_the_data_root_is_containerds_root(dump_root, docker_info, skip):
    f = context(INVENTORY, docker_info, dump_root=dump_root).facts()
    assert docker.containerd_root_inside(f, docker_info["DockerRootDir"]) == skip
