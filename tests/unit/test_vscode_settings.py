"""settings.json: `remote.SSH.remotePlatform` edited in place, every other byte kept, and the result read
back by Microsoft's jsonc-parser (what VS Code reads it with), installed from tests/jsonc's lock file."""
import difflib
import json
import shutil
import sys
import subprocess
from pathlib import Path

import pytest

from gpufleet import vscode_settings as vs
from gpufleet.errors import InputError
from tasks import sshconfig
from tests.conftest import REPO

JSONC = Path(__file__).resolve().parents[1] / "jsonc"
OURS = ["gpu1", "gpu1-dev"]
NOTE = "// editor\n"

# name -> (settings.json text, the aliases gpufleet added on its last run)
CASES = {
    "empty file": ("", []),
    "blanks only": ("  \n\n", []),
    "comments only": ("// my settings\n/* none yet */\n", []),
    "empty object": ("{}", []),
    "empty object, CRLF": ("{\r\n}\r\n", []),
    "key absent": ('{\n    "editor.fontSize": 14\n}\n', []),
    "key absent, tabs, trailing comma": ('{\n\t"editor.fontSize": 14,\n\t// the end\n}', []),
    "key absent, comment after the last entry": ('{\n  "a": 1 // one\n}\n', []),
    "key present, empty map": ('{\n  "remote.SSH.remotePlatform": {}\n}\n', []),
    "key present with other hosts": ('{\n  "remote.SSH.remotePlatform": {\n    "mac": "macOS",\n'
                                     '    "win": "windows"\n  },\n  "x": [1, 2,],\n}\n', []),
    "other hosts and a trailing comma": ('{"remote.SSH.remotePlatform": {"mac": "macOS",}, }', []),
    "comments everywhere": ('/*a*/{/*b*/"remote.SSH.remotePlatform"/*c*/:/*d*/{/*e*/"mac"/*f*/:/*g*/"macOS"/*h*/}'
                            '/*i*/,// j\n"z": "//not a comment /* */"}/*k*/\n', []),
    "the user set one of ours": ('{\n  "remote.SSH.remotePlatform": {\n    "gpu1-dev": "windows"\n  }\n}\n', []),
    "ours already there": ('{\n  "remote.SSH.remotePlatform": {\n    "gpu1": "linux",\n    "gpu1-dev": "linux"\n'
                           '  }\n}\n', ["gpu1", "gpu1-dev"]),
    "one of ours is gone (last)": ('{\n  "remote.SSH.remotePlatform": {\n    "gpu1": "linux",\n    "old": "linux"\n'
                                   '  }\n}\n', ["gpu1", "old"]),
    "one of ours is gone (first, CRLF)": ('{\r\n  "remote.SSH.remotePlatform": {\r\n    "old": "linux",\r\n'
                                         '    "mac": "macOS"\r\n  }\r\n}\r\n', ["old"]),
    "gone, on one line with others": ('{"remote.SSH.remotePlatform": {"mac": "macOS", "old": "linux"}}', ["old"]),
    "gone, the user's comment stays": ('{\n  "remote.SSH.remotePlatform": {\n    "mac": "macOS", // mine\n'
                                       '    "old": "linux"\n  }\n}\n', ["old"]),
    "BOM and unicode": ('\ufeff{\n  "window.title": "日本語 — ünïcödé 🚀",\n  "remote.SSH.remotePlatform": {\n'
                        '    "café": "linux"\n  }\n}\n', []),
    "nested objects and arrays around it": ('{\n  "[python]": {"editor.tabSize": 4, "x": {"remote.SSH.remotePlatform": 1}},'
                                            '\n  "remote.SSH.remotePlatform": {"a": "linux"},\n  "list": [{}, [], "s"]\n}',
                                            []),
}
BROKEN = {
    "[1, 2]": "the settings are not an object",
    '{"remote.SSH.remotePlatform": "linux"}': "is not a map of host to platform",
    '{"remote.SSH.remotePlatform": {}, "remote.SSH.remotePlatform": {}}': "appears 2 times",
    '{"a": 1 /* open': "line 1 column 9: a /\\* comment is not closed",
    '{"a": "no end}': "a string is not closed",
    '{"a" 1}': "':' expected",
    '{"a": 1} {}': "text after the end of the settings",
    "{a: 1}": "a property name must be a string",
}


@pytest.fixture(scope="module")
def jsonc_read():
    """jsonc-parser from tests/jsonc/package-lock.json (`npm ci` into the ignored node_modules)."""
    if not (JSONC / "node_modules" / "jsonc-parser").is_dir():
        assert shutil.which("npm"), "npm is needed to check settings.json against jsonc-parser"
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts"], cwd=JSONC, check=True,
                       capture_output=True, timeout=300)

    def read(paths):
        done = subprocess.run(["node", str(JSONC / "read.js"), *map(str, paths)], capture_output=True, text=True,
                              check=True, timeout=60)
        return [json.loads(line) for line in done.stdout.splitlines()]
    return read


def only(old: str, new: str, change: str) -> bool:
    """`new` is `old` with text inserted (or deleted) and nothing else changed."""
    ops = {tag for tag, *_ in difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes()} - {"equal"}
    return ops <= {change}


def test_edits_read_back_by_jsonc_parser(tmp_path, jsonc_read):
    names = list(CASES)
    before, after, owned = [], [], {}
    for n, name in enumerate(names):
        text, added = CASES[name]
        # what goes is only taken out, what comes is only put in: nothing of the user's is rewritten
        mid, kept = vs.set_remote_platforms(text, [a for a in added if a in OURS], added)
        new, owned[name] = vs.set_remote_platforms(mid, OURS, kept)
        assert only(text, mid, "delete") and only(mid, new, "insert"), name
        assert vs.set_remote_platforms(text, OURS, added) == (new, owned[name]), name
        assert vs.set_remote_platforms(new, OURS, owned[name]) == (new, owned[name]), name  # a second run: no change
        for where, data, label in ((before, text, "before"), (after, new, "after")):
            path = tmp_path / f"{n}-{label}.json"
            path.write_bytes(data.encode())
            where.append(path)
    for name, old, new in zip(names, jsonc_read(before), jsonc_read(after)):
        assert new["errors"] == [], (name, new)
        platforms = new["value"].pop(vs.KEY)
        old_platforms = (old["value"] or {}).pop(vs.KEY, {}) if isinstance(old["value"], dict) else {}
        assert new["value"] == (old["value"] or {}), name  # every other setting as jsonc-parser read it before
        user_set = {k: v for k, v in old_platforms.items() if k not in CASES[name][1]}
        expected = {**{a: "linux" for a in OURS}, **user_set}
        assert platforms == expected, name
        assert owned[name] == [a for a in OURS if a not in user_set], name
    for name, path in zip(names, after):
        if "\r\n" in CASES[name][0]:  # CRLF files stay CRLF
            assert b"\n" not in path.read_bytes().replace(b"\r\n", b""), name


def test_aliases_that_are_gone_are_removed_and_nothing_else(jsonc_read, tmp_path):
    text = CASES["key present with other hosts"][0]
    with_ours, owned = vs.set_remote_platforms(text, OURS, [])
    back, owned = vs.set_remote_platforms(with_ours, [], owned)
    assert (back, owned) == (text, [])
    path = tmp_path / "s.json"
    path.write_text(vs.set_remote_platforms(with_ours, ["gpu1"], ["gpu1", "gpu1-dev"])[0])
    assert jsonc_read([path])[0]["value"][vs.KEY] == {"mac": "macOS", "win": "windows", "gpu1": "linux"}


@pytest.mark.parametrize("text,message", BROKEN.items())
def test_a_file_it_cannot_read_is_refused_in_one_line(text, message):
    with pytest.raises(InputError, match=f"^settings.json: .*{message}.*; left untouched$"):
        vs.set_remote_platforms(text, OURS, [])


INVENTORY = """
[local]
ssh_config = "{d}/ssh_config"
known_hosts = "{d}/known_hosts"
{vscode}
[hosts.gpu1]
address = "10.0.0.11"
[hosts.gpu1.containers.dev]
image = "ubuntu:24.04"
ssh_port = 2222
"""
SETTINGS = ('\ufeff// my settings\r\n{\r\n\t"remote.SSH.remotePlatform": {\r\n\t\t"mac": "macOS", // the laptop\r\n\t},'
            '\r\n\t"editor.rulers": [80,],\r\n}\r\n')


def gen_ssh_config(tmp_path, home, inventory_text, *args):
    inventory = tmp_path / "hosts.toml"
    inventory.write_text(inventory_text)
    env = {"FABRIC_INVENTORY": str(inventory), "HOME": str(home), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "fabric", "-r", str(REPO), "gen-ssh-config", *args],
                          capture_output=True, text=True, env=env, timeout=60)


def test_gen_ssh_config_vscode_through_the_real_command_line(tmp_path, isolated_home, jsonc_read):
    settings = tmp_path / "settings.json"
    settings.write_bytes(SETTINGS.encode())
    text = INVENTORY.format(d=tmp_path, vscode=f'vscode_settings = "{settings}"')
    dry = gen_ssh_config(tmp_path, isolated_home, text, "--dry-run")
    assert dry.returncode == 0 and '+\t\t"gpu1": "linux",' in dry.stdout and "dry run: " + str(settings) in dry.stdout
    assert settings.read_bytes() == SETTINGS.encode()
    done = gen_ssh_config(tmp_path, isolated_home, text)
    assert done.returncode == 0, done.stderr
    written = settings.read_bytes()
    assert written.startswith(b"\xef\xbb\xbf// my settings\r\n") and b"// the laptop" in written
    assert jsonc_read([settings])[0] == {"errors": [], "value": {
        "remote.SSH.remotePlatform": {"mac": "macOS", "gpu1": "linux", "gpu1-dev": "linux"}, "editor.rulers": [80]}}
    assert f"{settings}: no changes (2 aliases" in gen_ssh_config(tmp_path, isolated_home, text).stdout
    # the container leaves the inventory: its alias goes, gpu1 and the user's entry stay
    gone = gen_ssh_config(tmp_path, isolated_home, text.split("[hosts.gpu1.containers.dev]")[0])
    assert gone.returncode == 0 and '-\t\t"gpu1-dev": "linux",' in gone.stdout, gone.stdout
    assert jsonc_read([settings])[0]["value"]["remote.SSH.remotePlatform"] == {"mac": "macOS", "gpu1": "linux"}
    # --vscode without [local] vscode_settings: VS Code's own file under $HOME (no such file yet)
    own = gen_ssh_config(tmp_path, isolated_home, INVENTORY.format(d=tmp_path, vscode=""), "--vscode")
    assert own.returncode == 0, own.stderr
    assert jsonc_read([isolated_home / ".config/Code/User/settings.json"])[0]["value"] == {
        "remote.SSH.remotePlatform": {"gpu1": "linux", "gpu1-dev": "linux"}}


def test_a_settings_file_it_cannot_read_is_left_untouched_exit_2(tmp_path, isolated_home):
    settings = tmp_path / "settings.json"
    settings.write_bytes(b'{"a": 1 /* open')
    done = gen_ssh_config(tmp_path, isolated_home, INVENTORY.format(d=tmp_path, vscode=f'vscode_settings = "{settings}"'))
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1] == (
        f"error: {settings}: line 1 column 9: a /* comment is not closed; left untouched")
    assert settings.read_bytes() == b'{"a": 1 /* open'


# a comment of the user's stays on the line of the entry it was written after
COMMENTS_STAY = {
    "key absent, comment after the last entry": '  "a": 1, // one\n  "remote.SSH.remotePlatform": {\n',
    "gone, the user's comment stays": '    "mac": "macOS", // mine\n    "gpu1": "linux",\n',
    "key absent, tabs, trailing comma": '\t\t"gpu1-dev": "linux"\n\t},\n\t// the end\n}',
}


@pytest.mark.parametrize("name", COMMENTS_STAY)
def test_comments_stay_with_their_lines(name):
    text, added = CASES[name]
    assert COMMENTS_STAY[name] in vs.set_remote_platforms(text, OURS, added)[0]


def test_a_dry_run_writes_no_record_either(tmp_path, isolated_home):
    """An alias the user took over (another platform) leaves settings.json as it is and shrinks gpufleet's
    record of its own aliases: not in a dry run."""
    settings = tmp_path / "settings.json"
    settings.write_bytes(SETTINGS.encode())
    text = INVENTORY.format(d=tmp_path, vscode=f'vscode_settings = "{settings}"')
    assert gen_ssh_config(tmp_path, isolated_home, text).returncode == 0
    record = next(tmp_path.rglob(sshconfig.VSCODE_RECORD))
    before = record.read_bytes()
    settings.write_bytes(settings.read_bytes().replace(b'"gpu1-dev": "linux"', b'"gpu1-dev": "windows"'))
    dry = gen_ssh_config(tmp_path, isolated_home, text, "--dry-run")
    assert dry.returncode == 0 and record.read_bytes() == before, dry.stdout
    assert gen_ssh_config(tmp_path, isolated_home, text).returncode == 0 and record.read_bytes() != before
