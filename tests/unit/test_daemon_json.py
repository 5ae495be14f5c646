"""daemon_json: strict parse, merge that keeps foreign keys, key diff, render (golden), schema checks."""
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
    assert daemon_json.key_changes({"debug": True}, {}) == ["- debug"]


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
