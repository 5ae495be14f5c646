"""OpenPGP fingerprints: real keys (made with gpg, and Debian's published keys), every packet-length
format, and a table of malformed inputs, each refused with its own reason."""
import base64
import shutil
import subprocess
from pathlib import Path

import pytest

from gpufleet import openpgp
from gpufleet.openpgp import OpenPGPError, crc24, dearmor, packets, primary_fingerprints

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "openpgp"
ED25519 = "761B5C67D4E753354ACA06C7ED39FBE1A02075A4"
RSA = "0D816186420A7329C0C61E8C11797716AACD5550"
RSA_SUBKEYS = ("32BC5DAF1E51445A43123E4788A746CD99626AE6", "A9E6B008716A0DA756344592DFE4F20B125E3469")

KEYS = [
    ("ed25519-primary-only.asc", [ED25519]),
    ("rsa3072-with-subkeys.asc", [RSA]),
    ("rsa3072-with-subkeys.gpg", [RSA]),
    ("two-keys.asc", [ED25519, RSA]),
    ("debian-12-stable-release.asc", ["4D64FEC119C2029067D6E791F8D2585B8783D481"]),
    ("debian-12-archive-automatic.asc", ["B8B80B5B623EAB6AD8775C45B7C5D7D6350947F8"]),
]


def read(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def test_the_table_names_every_key_fixture():
    assert sorted(k[0] for k in KEYS) == sorted(p.name for p in FIXTURES.iterdir() if p.suffix in (".asc", ".gpg"))


@pytest.mark.parametrize("name,expected", KEYS, ids=[k[0] for k in KEYS])
def test_primary_fingerprints_of_real_keys(name, expected):
    assert primary_fingerprints(read(name)) == expected


def test_subkeys_are_not_primary_keys():
    found = primary_fingerprints(read("rsa3072-with-subkeys.asc"))
    tags = [tag for tag, _ in packets(dearmor(read("rsa3072-with-subkeys.asc")))]
    assert tags.count(openpgp.PUBLIC_SUBKEY) == 2 and found == [RSA]
    assert not set(RSA_SUBKEYS) & set(found)


@pytest.mark.skipif(shutil.which("gpg") is None, reason="gpg is not installed")
@pytest.mark.parametrize("name", [k[0] for k in KEYS])
def test_gpg_agrees(name, tmp_path):
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    out = subprocess.run(["gpg", "--homedir", str(home), "--batch", "--show-keys", "--with-colons", str(FIXTURES / name)],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    # the first fpr after each pub (revoker lines, rvk, come between them)
    primaries = [next(l for l in out[i:] if l.startswith("fpr:")).split(":")[9]
                 for i, line in enumerate(out) if line.startswith("pub:")]
    assert primary_fingerprints(read(name)) == primaries


# --- the same packets in every length format ---

def header(tag: int, length: int, style: str) -> bytes:
    if style == "new":  # the shortest new-format length
        if length < 192:
            return bytes([0xC0 | tag, length])
        if length < 8384:
            length -= 192
            return bytes([0xC0 | tag, (length >> 8) + 192, length & 0xFF])
        return bytes([0xC0 | tag, 255]) + length.to_bytes(4, "big")
    if style == "new-5-octet":
        return bytes([0xC0 | tag, 255]) + length.to_bytes(4, "big")
    if style == "old-4-octet":
        return bytes([0x80 | tag << 2 | 2]) + length.to_bytes(4, "big")
    if style == "old-1-octet" and length < 256:
        return bytes([0x80 | tag << 2 | 0, length])
    return bytes([0x80 | tag << 2 | 1]) + length.to_bytes(2, "big")


def reencode(raw: bytes, style: str) -> bytes:
    return b"".join(header(tag, len(body), style) + body for tag, body in packets(raw))


@pytest.mark.parametrize("style", ["new", "new-5-octet", "old-4-octet", "old-1-octet"])
@pytest.mark.parametrize("name,expected", [KEYS[1], KEYS[3], KEYS[5]], ids=["rsa-subkeys", "two-keys", "debian-rsa4096"])
def test_every_length_format_gives_the_same_fingerprints(name, expected, style):
    raw = dearmor(read(name))
    assert primary_fingerprints(reencode(raw, style)) == expected


def test_old_format_indeterminate_length_runs_to_the_end():
    raw = dearmor(read("ed25519-primary-only.asc"))
    tagged = list(packets(raw))
    last_tag, last_body = tagged[-1]
    data = reencode(raw[:len(raw) - len(last_body) - 2], "old") + bytes([0x80 | last_tag << 2 | 3]) + last_body
    assert list(packets(data))[-1] == (last_tag, last_body)
    assert primary_fingerprints(data) == [ED25519]


def armour(raw: bytes, headers: str = "", checksum: bool = True, eol: str = "\n") -> bytes:
    text = base64.b64encode(raw).decode()
    lines = ["-----BEGIN PGP PUBLIC KEY BLOCK-----", *filter(None, headers.split("\n")), ""]
    lines += [text[i:i + 64] for i in range(0, len(text), 64)]
    if checksum:
        lines.append("=" + base64.b64encode(crc24(raw).to_bytes(3, "big")).decode())
    lines.append("-----END PGP PUBLIC KEY BLOCK-----")
    return (eol.join(lines) + eol).encode()


ARMOURS = [
    ("plain", {}),
    ("crlf", {"eol": "\r\n"}),
    ("headers", {"headers": "Version: GnuPG v2\nComment: https://example.invalid/key"}),
    ("no-checksum (RFC 9580)", {"checksum": False}),
]


@pytest.mark.parametrize("kwargs", [a[1] for a in ARMOURS], ids=[a[0] for a in ARMOURS])
def test_armour_variants(kwargs):
    raw = dearmor(read("rsa3072-with-subkeys.asc"))
    assert primary_fingerprints(armour(raw, **kwargs)) == [RSA]
    assert primary_fingerprints(b"Docker's key, as served:\n\n" + armour(raw, **kwargs)) == [RSA]


def test_crc24_known_value():
    assert crc24(b"") == 0xB704CE
    assert crc24(b"123456789") == 0x21CF02  # the CRC-24/OPENPGP check value


# --- malformed inputs: each refused with its own reason ---

def _ed_raw() -> bytes:
    return dearmor(read("ed25519-primary-only.asc"))


def _key_body() -> bytes:
    return next(body for tag, body in packets(_ed_raw()) if tag == openpgp.PUBLIC_KEY)


def _replace_armour_body(text: bytes) -> bytes:
    lines = read("ed25519-primary-only.asc").split(b"\n")
    lines[2] = text
    return b"\n".join(lines)


def _bad_checksum() -> bytes:
    lines = read("ed25519-primary-only.asc").split(b"\n")
    at = next(i for i, l in enumerate(lines) if l.startswith(b"="))
    lines[at] = b"=AAAA"
    return b"\n".join(lines)


MALFORMED = [
    ("empty", lambda: b"", "empty"),
    ("whitespace", lambda: b" \n\t\n", "empty"),
    ("html error page", lambda: b"<html><body>404 Not Found</body></html>", "starts with '<html><body>404"),
    ("plain text", lambda: b"deb https://download.docker.com/linux/ubuntu noble stable\n", "not an OpenPGP public key"),
    ("private key armour", lambda: b"-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nAAAA\n-----END PGP PRIVATE KEY BLOCK-----\n",
     "a private key must never be used"),
    ("signature armour", lambda: b"-----BEGIN PGP SIGNATURE-----\n\nAAAA\n-----END PGP SIGNATURE-----\n",
     "a PGP SIGNATURE, not a PGP PUBLIC KEY BLOCK"),
    ("two armoured blocks", lambda: read("ed25519-primary-only.asc") + read("rsa3072-with-subkeys.asc"), "2 armoured blocks"),
    ("no END line", lambda: read("ed25519-primary-only.asc").split(b"-----END")[0], "has no '-----END"),
    ("bad base64", lambda: _replace_armour_body(b"mDMEaS2b!!!!"), "not valid base64"),
    ("empty armour", lambda: armour(b""), "holds no data"),
    ("checksum mismatch", _bad_checksum, "checksum does not match"),
    ("truncated binary", lambda: _ed_raw()[:-10], "cut short"),
    ("truncated header", lambda: bytes([0xC6, 0xFF, 0x00]), "header is cut short"),
    ("partial body length", lambda: bytes([0xC6, 0xE1]) + b"\x04" * 8, "partial body length"),
    ("not a packet header", lambda: _ed_raw() + b"\x41", "not an OpenPGP packet header"),
    ("reserved tag 0", lambda: bytes([0xC0, 0x01, 0x00]), "tag 0 is reserved"),
    ("user ID first", lambda: header(13, 3, "new") + b"bob" + reencode(_ed_raw(), "new"), "tag 13, not a public key"),
    ("secret key packet", lambda: header(5, len(_key_body()), "new") + _key_body(), "holds a secret key"),
    ("secret subkey after the key", lambda: _ed_raw() + header(7, 7, "new") + b"\x04" * 7, "holds a secret key"),
    ("version 3 key", lambda: header(6, 8, "new") + b"\x03" + b"\x00" * 7, "version 3 key (obsolete"),
    ("version 6 key", lambda: header(6, 8, "new") + b"\x06" + b"\x00" * 7, "version 6 key; only version 4"),
    ("v4 body too short", lambda: header(6, 3, "new") + b"\x04\x00\x00", "malformed"),
    ("empty key packet", lambda: header(6, 0, "new"), "empty public-key packet"),
    ("signature only", lambda: header(2, 2, "new") + b"\x04\x00", "tag 2, not a public key"),
]


@pytest.mark.parametrize("make,reason", [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_inputs_are_refused_with_a_reason(make, reason):
    with pytest.raises(OpenPGPError) as err:
        primary_fingerprints(make())
    assert reason in str(err.value)
    assert "\n" not in str(err.value)
