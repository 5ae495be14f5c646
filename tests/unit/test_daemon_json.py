"""daemon_json: strict parse, merge that keeps foreign keys and drops the ones we set that the inventory
dropped, key diff, render (golden), schema checks, the record of our keys."""
import json
import re
from pathlib import Path

import pytest

from tests.goldens import check_golden

from gpufleet import daemon_json
from gpufleet.errors import InputError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "daemon_json"
GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "daemon_json"
# what the docker stage asks for on a GPU host with a mirror and a data disk
WANTED = {"data-root": "/data/docker", "registry-mirrors": ["http://10.0.0.5:5000"],
          "runtimes": {"nvidia": {"path": "nvidia-container-runtime", "args": []}}}


def assert_golden(name: str, text: str) -> None:
    check_golden(GOLDEN / name, text.encode())


def load(name: str) -> dict:
    return daemon_json.parse((FIXTURES / name).read_bytes().decode("utf-8"), name)


# file → the keys it has, in order
VALID = [
    ("empty.json", []),
    ("whitespace-only.json", []),
    ("nvidia-ctk.json", ["runtimes"]),
    ("hand-written-mirrors-logopts.json", ["registry-mirrors", "log-driver", "log-opts", "exec-opts",
                                           "storage-driver", "default-address-pools", "live-restore"]),
    ("tabs-runtimes-unicode-no-eol.json", ["data-root", "runtimes", "default-runtime", "labels"]),
    ("one-line-crlf.json", ["insecure-registries", "debug", "features"]),
]


@pytest.mark.parametrize("name,keys", VALID, ids=[v[0] for v in VALID])
def test_parse_and_merge_keep_every_foreign_key(name, keys):
    current = load(name)
    assert list(current) == keys
    merged = daemon_json.merge(current, WANTED)
    for key, value in current.items():
        if key not in WANTED:
            assert merged[key] == value
    assert list(merged)[:len(keys)] == keys  # existing keys keep their order; ours come after
    assert merged["data-root"] == "/data/docker" and merged["registry-mirrors"] == ["http://10.0.0.5:5000"]
    assert daemon_json.merge(merged, WANTED) == merged  # merging again changes nothing
    assert json.loads(daemon_json.render(merged)) == merged


def test_runtimes_are_merged_per_runtime():
    merged = daemon_json.merge(load("tabs-runtimes-unicode-no-eol.json"), WANTED)
    assert merged["runtimes"]["runsc"] == {"path": "/usr/local/bin/runsc", "runtimeArgs": ["--platform=systrap"]}
    assert merged["runtimes"]["nvidia"] == WANTED["runtimes"]["nvidia"]
    assert merged["default-runtime"] == "runsc"  # not ours to change


def test_nvidia_ctk_file_already_has_our_runtime():
    current = load("nvidia-ctk.json")
    assert daemon_json.merge(current, {"runtimes": WANTED["runtimes"]}) == current


def test_render_golden_merge():
    merged = daemon_json.merge(load("tabs-runtimes-unicode-no-eol.json"), WANTED)
    assert_golden("merge-tabs-runtimes-unicode.json", daemon_json.render(merged))
    assert_golden("merge-empty.json", daemon_json.render(daemon_json.merge({}, WANTED)))


def test_key_changes():
    old = load("hand-written-mirrors-logopts.json")
    new = daemon_json.merge(old, {"registry-mirrors": ["http://10.0.0.5:5000"], "data-root": "/data/docker"})
    assert daemon_json.key_changes(old, new) == [
        '~ registry-mirrors: ["https://docker.m.daocloud.io"] -> ["http://10.0.0.5:5000"]',
        '+ data-root: "/data/docker"',
    ]
    assert daemon_json.key_changes(new, new) == []
    assert daemon_json.key_changes({"debug": True}, {}) == ["- debug: true"]


NVIDIA = {"path": "nvidia-container-runtime", "args": []}
RUNSC = {"path": "/usr/local/bin/runsc"}
MIRROR = "http://10.0.0.5:5000"

# wanted → the key paths the tool owns (one per runtime, never the whole runtimes table)
OWNED = [
    ({}, []),
    ({"registry-mirrors": [MIRROR], "data-root": "/data"}, [("data-root",), ("registry-mirrors",)]),
    ({"runtimes": {"nvidia": NVIDIA}, "log-level": "warn"}, [("log-level",), ("runtimes", "nvidia")]),
    ({"runtimes": {"nvidia": NVIDIA, "kata": RUNSC}}, [("runtimes", "kata"), ("runtimes", "nvidia")]),
]


@pytest.mark.parametrize("wanted,paths", OWNED)
def test_owned_keys(wanted, paths):
    assert daemon_json.owned_keys(wanted) == paths


# (file now, inventory wants, keys we set before) → file after
MERGES = [
    ("dropped mirror goes, foreign key stays",
     {"registry-mirrors": [MIRROR], "log-level": "warn"}, {}, [("registry-mirrors",)], {"log-level": "warn"}),
    ("dropped key changed by hand still goes (we own it)",
     {"registry-mirrors": ["https://by.hand"], "debug": True}, {}, [("registry-mirrors",)], {"debug": True}),
    ("owned key changed by hand is set back",
     {"registry-mirrors": ["https://by.hand"]}, {"registry-mirrors": [MIRROR]}, [("registry-mirrors",)],
     {"registry-mirrors": [MIRROR]}),
    ("a key we never set is never removed",
     {"registry-mirrors": [MIRROR], "max-concurrent-downloads": 5}, {}, [], {"registry-mirrors": [MIRROR],
                                                                           "max-concurrent-downloads": 5}),
    ("a dropped key already gone by hand is no error", {"debug": True}, {}, [("data-root",)], {"debug": True}),
    ("dropped data-root goes (Docker's own /var/lib/docker again)",
     {"data-root": "/data/docker", "registry-mirrors": [MIRROR]}, {"registry-mirrors": [MIRROR]},
     [("data-root",), ("registry-mirrors",)], {"registry-mirrors": [MIRROR]}),
    ("nvidia runtime dropped, another runtime stays",
     {"runtimes": {"runsc": RUNSC, "nvidia": NVIDIA}, "default-runtime": "runsc"}, {}, [("runtimes", "nvidia")],
     {"runtimes": {"runsc": RUNSC}, "default-runtime": "runsc"}),
    ("nvidia runtime dropped, the table it leaves empty goes",
     {"runtimes": {"nvidia": NVIDIA}, "debug": False}, {}, [("runtimes", "nvidia")], {"debug": False}),
    ("an empty runtimes table we did not empty stays", {"runtimes": {}}, {}, [("runtimes", "nvidia")],
     {"runtimes": {}}),
    ("one daemon_json key dropped, the others kept in order",
     {"a": 1, "log-level": "warn", "b": 2}, {"a": 1, "b": 2}, [("a",), ("b",), ("log-level",)], {"a": 1, "b": 2}),
    ("a foreign key the inventory starts listing becomes ours",
     {"log-level": "debug"}, {"log-level": "warn"}, [], {"log-level": "warn"}),
]


@pytest.mark.parametrize("current,wanted,owned_before,expected", [m[1:] for m in MERGES], ids=[m[0] for m in MERGES])
def test_merge_removes_only_the_keys_we_set_that_the_inventory_dropped(current, wanted, owned_before, expected):
    merged = daemon_json.merge(current, wanted, owned_before)
    assert merged == expected and list(merged) == list(expected)
    assert daemon_json.merge(merged, wanted, daemon_json.owned_keys(wanted)) == merged  # the next run: no change


# old → new → the per-key diff a dry run shows (runtimes entry by entry)
KEY_CHANGES = [
    ({"registry-mirrors": [MIRROR], "debug": True}, {"debug": True}, [f'- registry-mirrors: ["{MIRROR}"]']),
    ({"runtimes": {"runsc": RUNSC, "nvidia": NVIDIA}}, {"runtimes": {"runsc": RUNSC}},
     ['- runtimes.nvidia: {"args": [], "path": "nvidia-container-runtime"}']),
    ({"runtimes": {"nvidia": NVIDIA}}, {}, ['- runtimes.nvidia: {"args": [], "path": "nvidia-container-runtime"}']),
    ({"runtimes": {"runsc": RUNSC}}, {"runtimes": {"runsc": RUNSC, "nvidia": NVIDIA}},
     ['+ runtimes.nvidia: {"args": [], "path": "nvidia-container-runtime"}']),
    ({"data-root": "/data/docker", "a": 1}, {"a": 2}, ["~ a: 1 -> 2", '- data-root: "/data/docker"']),
]


@pytest.mark.parametrize("old,new,lines", KEY_CHANGES)
def test_key_changes_show_removals_and_runtimes_one_by_one(old, new, lines):
    assert daemon_json.key_changes(old, new) == lines


def test_changed_keys_names_what_is_set_and_what_is_removed():
    old = {"runtimes": {"nvidia": NVIDIA}, "registry-mirrors": [MIRROR], "debug": True}
    new = {"debug": False, "data-root": "/d"}
    assert daemon_json.changed_keys(old, new) == (["debug", "data-root"], ["runtimes.nvidia", "registry-mirrors"])


def test_record_of_our_keys_golden_and_round_trip():
    paths = [("runtimes", "nvidia"), ("data-root",), ("registry-mirrors",)]
    text = daemon_json.render_owned(paths)
    assert_golden("owned-keys.json", text)
    assert daemon_json.parse_owned(text, "r.json") == sorted(paths)
    assert daemon_json.parse_owned(daemon_json.render_owned([]), "r.json") == []
    assert json.loads(text)["keys"] == [["data-root"], ["registry-mirrors"], ["runtimes", "nvidia"]]


# a record that is not what we write → one line naming the file; nothing is removed on its word
BAD_RECORDS = [
    ("not-json", '{"keys": [["data-root"],]}', r"^r\.json: line 1 column 25: Expecting value; it was left untouched"),
    ("no-keys", '{"about": "x"}', r"^r\.json: not a record gpufleet wrote"),
    ("top-level-list", '[["data-root"]]', r"^r\.json: not a record gpufleet wrote"),
    ("dotted-string", '{"keys": ["runtimes.nvidia"]}', r'^r\.json: key "runtimes.nvidia" is not a daemon.json key'),
    ("too-deep", '{"keys": [["log-opts", "max-size"]]}', r"key \[\"log-opts\", \"max-size\"\] is not"),
    ("empty-name", '{"keys": [[""]]}', r'key \[""\] is not'),
]


@pytest.mark.parametrize("text,pattern", [b[1:] for b in BAD_RECORDS], ids=[b[0] for b in BAD_RECORDS])
def test_bad_record_is_refused_in_one_line(text, pattern):
    with pytest.raises(InputError) as err:
        daemon_json.parse_owned(text, "r.json")
    assert "\n" not in str(err.value) and re.search(pattern, str(err.value)), str(err.value)


# text → the one-line message it must raise (file name, and line/column where JSON has them)
INVALID = [
    ("trailing-comma", '{\n  "debug": true,\n}\n', r"^d\.json: line 3 column 1: Expecting property name"),
    ("comment", '{\n  // mirrors\n  "debug": true\n}\n', r"^d\.json: line 2 column 3: Expecting property name"),
    ("stray-brace", '{"debug": true}\n}\n', r"^d\.json: line 2 column 1: Extra data"),
    ("single-quotes", "{'debug': true}", r"^d\.json: line 1 column 2: "),
    ("top-level-list", '["debug"]', r"^d\.json: the top level is list, not an object"),
    ("top-level-string", '"debug"', r"^d\.json: the top level is str"),
    ("duplicate-key", '{"data-root": "/a",\n "data-root": "/b"}', r"^d\.json: key 'data-root' appears twice"),
    ("nested-duplicate", '{"log-opts": {"max-size": "1m", "max-size": "2m"}}', r"key 'max-size' appears twice"),
    ("nan", '{"mtu": NaN}', r"^d\.json: NaN is not JSON"),
    ("bom", '\ufeff{"debug": true}', r"^d\.json: line 1 column 1: Unexpected UTF-8 BOM"),
    ("truncated", '{"registry-mirrors": ["https://m.example', r"^d\.json: line 1 column 23: Unterminated string"),
]


@pytest.mark.parametrize("text,pattern", [i[1:] for i in INVALID], ids=[i[0] for i in INVALID])
def test_invalid_daemon_json_is_refused_in_one_line(text, pattern):
    with pytest.raises(InputError) as err:
        daemon_json.parse(text, "d.json")
    message = str(err.value)
    assert "\n" not in message and re.search(pattern, message), message
    assert "untouched" in message


SCHEMA = [
    ({"data-root": "/data/docker", "registry-mirrors": ["https://m.example.com"], "live-restore": True}, []),
    ({"data-root": "data/docker"}, ["data-root must be an absolute path, not 'data/docker'"]),
    ({"registry-mirrors": "https://m"}, ["registry-mirrors must be a list"]),
    ({"registry-mirrors": ["docker.mirrors.ustc.edu.cn"]},
     ["registry mirror 'docker.mirrors.ustc.edu.cn' is not an http(s) URL"]),
    ({"runtimes": {"nvidia": {"runtimeArgs": []}}}, ["runtimes.nvidia needs a string 'path'"]),
    ({"runtimes": {"nvidia": {"path": "x", "args": "--debug"}}}, ["runtimes.nvidia args must be a list"]),
    ({"runtimes": []}, ["runtimes must be an object"]),
    ({"live-restore": "true", "debug": 1}, ["live-restore must be true or false", "debug must be true or false"]),
    ({"default-runtime": None}, ["default-runtime must be a string"]),
]


@pytest.mark.parametrize("config,problems", SCHEMA)
def test_check_schema(config, problems):
    assert daemon_json.check_schema(config) == problems
