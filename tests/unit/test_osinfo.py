"""osinfo: /etc/os-release and uname, from files in the real formats (tests/fixtures/osinfo)."""
import re
from pathlib import Path

import pytest

from gpufleet import osinfo

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "osinfo"


def release(name: str) -> osinfo.OsRelease:
    return osinfo.parse_os_release((FIXTURES / name).read_text(encoding="utf-8"))


KNOWN = (r"; gpufleet knows Ubuntu 18\.04 \(bionic\), 20\.04 \(focal\), 22\.04 \(jammy\), 24\.04 \(noble\), "
         r"26\.04 \(resolute\), Debian 11 \(bullseye\), 12 \(bookworm\), 13 \(trixie\) and derivatives built on them$")

# file, id, family, version_id, codename, base codename, apt style, check_supported regex (None = supported)
RELEASES = [
    ("ubuntu-26.04.os-release", "ubuntu", "ubuntu", "26.04", "resolute", "resolute", "deb822", None),
    ("ubuntu-26.10.os-release", "ubuntu", "ubuntu", "26.10", "stonking", "stonking", "deb822",
     r"^Ubuntu 26\.10 is not supported" + KNOWN),
    ("ubuntu-24.04.os-release", "ubuntu", "ubuntu", "24.04", "noble", "noble", "deb822", None),
    ("ubuntu-22.04.os-release", "ubuntu", "ubuntu", "22.04", "jammy", "jammy", "classic", None),
    ("ubuntu-18.04.os-release", "ubuntu", "ubuntu", "18.04", "bionic", "bionic", "classic", None),
    ("ubuntu-20.04-crlf-quotes.os-release", "ubuntu", "ubuntu", "20.04", "focal", "focal", "classic", None),
    ("ubuntu-16.04.os-release", "ubuntu", "ubuntu", "16.04", "xenial", "xenial", "classic",
     r"^Ubuntu 16\.04\.7 LTS is not supported" + KNOWN),
    ("debian-12.os-release", "debian", "debian", "12", "bookworm", "bookworm", "deb822", None),
    ("debian-11.os-release", "debian", "debian", "11", "bullseye", "bullseye", "classic", None),
    ("debian-13.os-release", "debian", "debian", "13", "trixie", "trixie", "deb822", None),  # a lab server's
    ("debian-sid.os-release", "debian", "debian", "", "trixie", "trixie", "deb822",
     r"trixie/sid: no VERSION_ID \(testing/unstable is not supported\)" + KNOWN),
    ("mint-21.3.os-release", "linuxmint", "ubuntu", "21.3", "virginia", "jammy", "classic", None),
    ("mint-22.os-release", "linuxmint", "ubuntu", "22", "wilma", "noble", "deb822", None),
    ("lmde-6.os-release", "linuxmint", "debian", "6", "faye", "bookworm", "deb822", None),
    ("pop-22.04.os-release", "pop", "ubuntu", "22.04", "jammy", "jammy", "classic", None),
    ("kali-rolling.os-release", "kali", "debian", "2024.2", "kali-rolling", "kali-rolling", "deb822",
     r"built on debian 'kali-rolling', which is not supported" + KNOWN),
    ("rocky-9.os-release", "rocky", None, "9.4", "", "", None,
     r"^Rocky Linux 9\.4 \(Blue Onyx\) \(ID=rocky\) is not Ubuntu, Debian or a derivative of them \(ID_LIKE\)" + KNOWN),
]


@pytest.mark.parametrize("name,id_,family,version,codename,base,style,unsupported", RELEASES,
                         ids=[r[0] for r in RELEASES])
def test_os_release(name, id_, family, version, codename, base, style, unsupported):
    os = release(name)
    assert (os.id, os.family, os.version_id, os.codename, os.base_codename) == (id_, family, version, codename, base)
    reason = osinfo.check_supported(os)
    if unsupported is None:
        assert reason is None
    else:
        assert reason and "\n" not in reason
        assert re.search(unsupported, reason), reason
    if style:
        assert osinfo.apt_sources_style(os) == style


def test_shell_quoting_comments_and_crlf():
    os = release("ubuntu-20.04-crlf-quotes.os-release")
    assert os.pretty_name == 'Ubuntu 20.04.6 LTS "custom"'
    assert os.codename == "focal"  # not "focal # trailing comment", not "focal\r"


def test_codename_from_version_when_version_codename_is_missing():
    os = osinfo.parse_os_release('ID=debian\nVERSION_ID="11"\nVERSION="Debian GNU/Linux 11 (bullseye)"\n')
    assert os.codename == "bullseye" and osinfo.check_supported(os) is None
    assert osinfo.parse_os_release('ID=rocky\nVERSION="9.4 (Blue Onyx)"\n').codename == ""


def test_empty_and_garbage_os_release():
    assert osinfo.parse_os_release("") == osinfo.OsRelease()
    os = osinfo.parse_os_release('ID="unterminated\nnot a line\n=novalue\n')
    assert os.id == "unterminated"
    assert "is not Ubuntu, Debian" in osinfo.check_supported(osinfo.OsRelease())


# uname output, is_wsl, wsl_version
UNAMES = [
    ("uname-a-ubuntu-server.txt", False, None),
    ("uname-r-aws.txt", False, None),
    ("uname-a-hostname-contains-wsl.txt", False, None),  # the host name is not the kernel
    ("uname-a-hostname-contains-microsoft.txt", False, None),
    ("uname-a-wsl2-6.6.txt", True, 2),
    ("uname-a-wsl1.txt", True, 1),  # WSL1 is WSL (and the worse case): is_wsl says True
]


@pytest.mark.parametrize("name,wsl,version", UNAMES, ids=[u[0] for u in UNAMES])
def test_wsl_detection(name, wsl, version):
    text = (FIXTURES / name).read_text()
    assert osinfo.is_wsl(text) is wsl
    assert osinfo.wsl_version(text) == version


@pytest.mark.parametrize("text,version", [
    ("", None),
    ("5.15.167.4-microsoft-standard-WSL2\n", 2),
    ("4.19.128-microsoft-standard\n", 2),
    ("4.4.0-17763-Microsoft\n", 1),
    ("6.1.21.2-WSL2-custom\n", 2),
    ("6.8.0-45-generic\n", None),
])
def test_wsl_version_from_uname_r(text, version):
    assert osinfo.wsl_version(text) == version
