"""apt_sources: rendered sources per release (golden files), refusing non-UTF-8 files, finding mirrors."""
import re
from pathlib import Path

import pytest

from tests.goldens import check_golden

from gpufleet import apt_sources, osinfo
from gpufleet.errors import InputError

TESTS = Path(__file__).resolve().parents[1]
FIXTURES = TESTS / "fixtures" / "apt_sources"
GOLDEN = TESTS / "golden" / "apt_sources"
TUNA = {"ubuntu": "https://mirrors.tuna.tsinghua.edu.cn/ubuntu", "debian": "https://mirrors.tuna.tsinghua.edu.cn/debian/"}


def assert_golden(name: str, text: str) -> None:
    check_golden(GOLDEN / name, text.encode())


def release(name: str) -> osinfo.OsRelease:
    return osinfo.parse_os_release((TESTS / "fixtures" / "osinfo" / name).read_text())


# os-release fixture, mirror?, arch → path of the sources file, golden file
RENDERS = [
    ("ubuntu-18.04.os-release", False, "amd64", "/etc/apt/sources.list", "ubuntu-18.04-official.list"),
    ("ubuntu-18.04.os-release", True, "amd64", "/etc/apt/sources.list", "ubuntu-18.04-tuna.list"),
    ("ubuntu-22.04.os-release", False, "amd64", "/etc/apt/sources.list", "ubuntu-22.04-official.list"),
    ("ubuntu-22.04.os-release", True, "amd64", "/etc/apt/sources.list", "ubuntu-22.04-tuna.list"),
    ("ubuntu-24.04.os-release", False, "amd64", "/etc/apt/sources.list.d/ubuntu.sources", "ubuntu-24.04-official.sources"),
    ("ubuntu-26.04.os-release", True, "amd64", "/etc/apt/sources.list.d/ubuntu.sources", "ubuntu-26.04-tuna.sources"),
    ("ubuntu-24.04.os-release", True, "amd64", "/etc/apt/sources.list.d/ubuntu.sources", "ubuntu-24.04-tuna.sources"),
    ("ubuntu-24.04.os-release", False, "arm64", "/etc/apt/sources.list.d/ubuntu.sources", "ubuntu-24.04-arm64-official.sources"),
    ("ubuntu-24.04.os-release", True, "arm64", "/etc/apt/sources.list.d/ubuntu.sources", "ubuntu-24.04-arm64-tuna.sources"),
    ("debian-11.os-release", False, "amd64", "/etc/apt/sources.list", "debian-11-official.list"),
    ("debian-11.os-release", True, "amd64", "/etc/apt/sources.list", "debian-11-tuna.list"),
    ("debian-12.os-release", False, "amd64", "/etc/apt/sources.list.d/debian.sources", "debian-12-official.sources"),
    ("debian-12.os-release", True, "arm64", "/etc/apt/sources.list.d/debian.sources", "debian-12-tuna.sources"),
    ("mint-21.3.os-release", True, "amd64", "/etc/apt/sources.list", "mint-21.3-tuna.list"),  # jammy underneath
]


@pytest.mark.parametrize("os_release,mirror,arch,path,golden", RENDERS, ids=[r[4] for r in RENDERS])
def test_render_sources_golden(os_release, mirror, arch, path, golden):
    os = release(os_release)
    got_path, text = apt_sources.render_sources(os, TUNA[os.family] if mirror else None, arch=arch)
    assert got_path == path
    assert_golden(golden, text)
    # what we write is what we read back: the mirror (or the official archive) and nothing else
    hosts = {re.match(r"\w+://([^/]+)", uri).group(1) for uri in apt_sources.mirrors_in(text)}
    if mirror:
        assert hosts == {"mirrors.tuna.tsinghua.edu.cn"}
    else:
        assert hosts <= {"archive.ubuntu.com", "security.ubuntu.com", "ports.ubuntu.com", "deb.debian.org"}
    assert f" {os.base_codename}-security " in text.replace("\n", " ")


def test_render_sources_refuses_what_it_cannot_name():
    with pytest.raises(InputError, match=r"^cannot write apt sources for Rocky Linux 9\.4"):
        apt_sources.render_sources(release("rocky-9.os-release"), None)
    with pytest.raises(InputError, match=r"^cannot write apt sources for an unknown OS$"):
        apt_sources.render_sources(osinfo.OsRelease(), None)


def test_mirror_with_a_trailing_slash_and_custom_components():
    _, text = apt_sources.render_sources(release("ubuntu-22.04.os-release"), "http://10.0.0.5:3142/ubuntu/", "main")
    assert "deb http://10.0.0.5:3142/ubuntu jammy main\n" in text and "//ubuntu " not in text


# file → hosts of its active sources (None: refused as not UTF-8)
MIRRORS = [
    ("ubuntu-jammy-official.list", ["archive.ubuntu.com", "security.ubuntu.com"]),
    ("options-and-cdrom.list", ["mirrors.ustc.edu.cn", "mirrors.tuna.tsinghua.edu.cn", "cdrom:["]),
    ("debian-bookworm-default.sources", ["deb.debian.org"]),
    ("disabled-and-continued.sources", ["mirrors.ustc.edu.cn", "mirrors.aliyun.com"]),  # not the Enabled: no one
    ("crlf.sources", ["mirrors.bfsu.edu.cn"]),
    ("utf8-bom.list", ["mirrors.ustc.edu.cn"]),
    ("gbk-comment.list", None),
]


def host_of(uri: str) -> str:
    m = re.match(r"\w+://([^/]+)", uri)
    return m.group(1) if m else uri[:7]


@pytest.mark.parametrize("name,hosts", MIRRORS, ids=[m[0] for m in MIRRORS])
def test_check_text_and_mirrors_in(name, hosts):
    data = (FIXTURES / name).read_bytes()
    if hosts is None:
        with pytest.raises(InputError) as err:
            apt_sources.check_text(data, f"dev:/etc/apt/{name}")
        message = str(err.value)
        assert "\n" not in message
        assert re.search(rf"^dev:/etc/apt/{re.escape(name)}: not UTF-8 at byte \d+; left untouched", message)
        return
    found = list(dict.fromkeys(host_of(u) for u in apt_sources.mirrors_in(apt_sources.check_text(data, name))))
    assert found == hosts


def test_mirrors_in_ignores_comments_and_blank_text():
    assert apt_sources.mirrors_in("") == []
    assert apt_sources.mirrors_in("# deb http://a/ubuntu jammy main\n\n#URIs: http://b/\n") == []
    assert apt_sources.mirrors_in("deb-src http://a/ubuntu jammy main\ndeb http://a/ubuntu jammy main\n") == [
        "http://a/ubuntu"]
