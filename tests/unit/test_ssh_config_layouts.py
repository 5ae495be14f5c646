"""Real-world ~/.ssh/config layouts (tests/fixtures/ssh_config_layouts): after gen-ssh-config, the real
`ssh -G` gives our values for every managed alias, whatever the user's file and the files it Includes say,
and the full resolved configuration of every host of the user's own is exactly what it was before."""
import re
import shlex
import shutil
from pathlib import Path

import pytest

from gpufleet import ssh_config
from tests.goldens import check_golden
from tests.openssh import SSH, ssh_dump, ssh_resolve
from tests.unit.test_ssh_config import BLOCK, ENTRIES

ROOT = Path(__file__).resolve().parents[1] / "fixtures" / "ssh_config_layouts"
GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "ssh_config_layouts"
LAYOUTS = sorted(p.name for p in ROOT.iterdir() if p.is_dir())
# layouts where the block where an earlier version put it (the old file, or below the leading Includes) lost
# values of ours to the user's lines or an Include'd `Host *`
OLD_PLACE_LOST = {"include-at-top-host-star", "include-dir-glob", "crlf-include", "old-block-below-includes",
                  "old-block-v1-at-end"}
ALIASES = {e.alias for e in ENTRIES}
SECTION = re.compile(r"^[ \t]*(host|match)(?:[ \t]*=[ \t]*|[ \t]+)(.*)$", re.IGNORECASE)


def not_ours(config: Path, entry: ssh_config.SshHostEntry) -> dict[str, tuple]:
    """The options of ours that `ssh -G` resolves otherwise for `entry`: {option: (resolved, ours)}."""
    rc, stdout, err = ssh_dump(config, entry.alias)
    assert rc == 0, err
    first: dict[str, str] = {}
    for line in stdout.splitlines():
        key, _, value = line.partition(" ")
        first.setdefault(key, value)
    wanted = {"hostname": entry.hostname, "port": str(entry.port), "user": entry.user,
              "identityfile": entry.identity_file, "proxyjump": entry.proxy_jump, "proxycommand": None,
              "hostkeyalias": entry.host_key_alias, "userknownhostsfile": entry.known_hosts_file,
              "stricthostkeychecking": "true", "forwardagent": "yes" if entry.forward_agent else "no"}
    return {k: (first.get(k), v) for k, v in wanted.items() if first.get(k) != v}


def user_host_names(home: Path) -> list[str]:
    """A name for every Host/Match host pattern in the user's files (a glob made concrete), and one more."""
    names = {"other.example.com"}
    for path in sorted(p for p in home.rglob("*") if p.is_file()):
        for line in path.read_bytes().decode("utf-8", "replace").splitlines():
            m = SECTION.match(line)
            if not m:
                continue
            words = shlex.split(m.group(2), comments=True)
            if m.group(1).lower() == "match":
                words = [p for k, v in zip(words, words[1:]) if k.lower().lstrip("!") in ("host", "originalhost")
                         for p in v.split(",")]
            names |= {w.lstrip("!").replace("*", "x1").replace("?", "q") for w in words}
    return sorted(names - ALIASES)


def previous_place(original: bytes) -> bytes:
    """Where the previous version put the block: below the leading Include lines (and comments among them)."""
    lines = original.splitlines(keepends=True)
    at = 0
    for i, line in enumerate(lines):
        if line.strip() and not line.lstrip().startswith(b"#") and not line.lower().lstrip().startswith(b"include"):
            break
        if line.lower().lstrip().startswith(b"include"):
            at = i + 1
    return b"".join(lines[:at]) + BLOCK.encode() + b"\n" + b"".join(lines[at:])


@pytest.fixture
def layout_home(request, isolated_home):
    shutil.copytree(ROOT / request.param / "home", isolated_home, dirs_exist_ok=True)
    return isolated_home


def test_every_layout_has_its_goldens():
    assert sorted(p.name.rsplit(".", 1)[0] for p in GOLDEN.glob("*.config")) == LAYOUTS
    assert sorted(p.name.rsplit(".", 1)[0] for p in GOLDEN.glob("*.warnings")) == LAYOUTS


@pytest.mark.parametrize("layout_home", LAYOUTS, indirect=True, ids=LAYOUTS)
def test_layout_golden_and_warnings(layout_home, request):
    layout = request.node.callspec.id
    original = (layout_home / ".ssh" / "config").read_bytes()
    updated = ssh_config.update(original, BLOCK, path="~/.ssh/config")
    check_golden(GOLDEN / f"{layout}.config", updated)
    assert ssh_config.update(updated, BLOCK) == updated
    head = updated[:updated.index(ssh_config.BEGIN.encode())]
    assert all(not line.strip() or line.lstrip().startswith(b"#") for line in head.splitlines())  # first
    warnings = ssh_config.overlapping_sections(original, ENTRIES, "~/.ssh/config")
    check_golden(GOLDEN / f"{layout}.warnings", "".join(w + "\n" for w in warnings).encode())
    without_numbers = lambda found: [re.sub(r"^[^:]*:\d+: ", "", w) for w in found]  # noqa: E731
    assert without_numbers(ssh_config.overlapping_sections(updated, ENTRIES)) == without_numbers(warnings)


@pytest.mark.skipif(SSH is None, reason="no ssh client")
@pytest.mark.parametrize("layout_home", LAYOUTS, indirect=True, ids=LAYOUTS)
def test_layout_with_real_ssh(layout_home, request):
    layout = request.node.callspec.id
    config = layout_home / ".ssh" / "config"
    original = config.read_bytes()
    after = config.with_name("config.after")
    after.write_bytes(ssh_config.update(original, BLOCK, path="~/.ssh/config"))
    for entry in ENTRIES:
        assert not_ours(after, entry) == {}, entry.alias
    for name in user_host_names(layout_home):
        rc, before_out, err = ssh_dump(config, name)
        assert ssh_dump(after, name)[:2] == (rc, before_out), name
        assert rc == 0 or "invalid characters" in err, err  # only `Host a,b` (a literal comma) is refused
    old = config.with_name("config.previous")
    old.write_bytes(original if ssh_config.BEGIN.encode() in original else previous_place(original))
    lost = {e.alias: not_ours(old, e) for e in ENTRIES}
    assert any(lost.values()) == (layout in OLD_PLACE_LOST), lost
