"""Pure: the primary-key fingerprints of an OpenPGP public key file (RFC 4880 / RFC 9580).

Used to check an apt signing key against its pin before it is installed: the key
file (ASCII armour or binary) is split into packets, and each public-key packet
(tag 6) gives one v4 fingerprint, SHA-1 over 0x99, the body's two-byte length and
the body.  Subkeys (tag 14), user IDs and signatures are skipped: the pin names
the primary key.  Anything else — a secret key, a partial length, a truncated
packet, a bad armour checksum, an HTML error page — is an OpenPGPError.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import re
from typing import Iterator

PUBLIC_KEY, SECRET_KEY, SECRET_SUBKEY, PUBLIC_SUBKEY = 6, 5, 7, 14
ARMOUR_BEGIN = re.compile(rb"^-----BEGIN PGP ([A-Z ,/0-9]+)-----$")
ARMOUR_HEADER = re.compile(rb"^[A-Za-z][A-Za-z0-9-]*: ")


class OpenPGPError(ValueError):
    """The data is not a usable OpenPGP public key; the message says why in one line."""


def crc24(data: bytes) -> int:
    """The armour checksum (RFC 4880 section 6.1)."""
    crc = 0xB704CE
    for byte in data:
        crc ^= byte << 16
        for _ in range(8):
            crc <<= 1
            if crc & 0x1000000:
                crc ^= 0x1864CFB
    return crc & 0xFFFFFF


def dearmor(data: bytes) -> bytes:
    """The packets inside one `PGP PUBLIC KEY BLOCK` armour, checksum verified when present."""
    lines = [line.strip() for line in data.replace(b"\r\n", b"\n").split(b"\n")]
    begins = [i for i, line in enumerate(lines) if ARMOUR_BEGIN.match(line)]
    if not begins:
        raise OpenPGPError(f"no OpenPGP armour and no OpenPGP packets (starts with {_start(data)})")
    kind = ARMOUR_BEGIN.match(lines[begins[0]]).group(1).decode()
    if kind != "PUBLIC KEY BLOCK":
        if "PRIVATE" in kind or "SECRET" in kind:
            raise OpenPGPError(f"a PGP {kind}: a private key must never be used as an apt keyring")
        raise OpenPGPError(f"a PGP {kind}, not a PGP PUBLIC KEY BLOCK")
    if len(begins) > 1:
        raise OpenPGPError(f"{len(begins)} armoured blocks in one file; expected one PUBLIC KEY BLOCK")
    end_line = b"-----END PGP PUBLIC KEY BLOCK-----"
    try:
        end = lines.index(end_line, begins[0])
    except ValueError:
        raise OpenPGPError("the armour has no '-----END PGP PUBLIC KEY BLOCK-----' line (cut short?)") from None
    body = lines[begins[0] + 1:end]
    while body and ARMOUR_HEADER.match(body[0]):
        body.pop(0)
    checksum = None
    if body and body[-1].startswith(b"="):
        checksum = body.pop()
    encoded = b"".join(body)
    try:
        packets = base64.b64decode(encoded, validate=True)
    except binascii.Error:
        raise OpenPGPError("the armour body is not valid base64") from None
    if not packets:
        raise OpenPGPError("the armour holds no data")
    if checksum is not None:
        try:
            expected = int.from_bytes(base64.b64decode(checksum[1:], validate=True), "big")
        except binascii.Error:
            raise OpenPGPError(f"the armour checksum line {checksum.decode(errors='replace')!r} is not base64") from None
        if len(checksum) != 5 or expected != crc24(packets):
            raise OpenPGPError("the armour checksum does not match its data (the key was altered or cut)")
    return packets


def packets(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(tag, body) of each packet; old and new length formats (RFC 4880 section 4.2)."""
    i = 0
    while i < len(data):
        offset, ctb = i, data[i]
        i += 1
        if not ctb & 0x80:
            raise OpenPGPError(f"byte {offset}: 0x{ctb:02x} is not an OpenPGP packet header")
        if ctb & 0x40:  # new format: tag in the low six bits, then a one-, two- or five-octet length
            tag = ctb & 0x3F
            first = _byte(data, i, offset)
            if first < 192:
                length, i = first, i + 1
            elif first < 224:
                length, i = ((first - 192) << 8) + _byte(data, i + 1, offset) + 192, i + 2
            elif first == 255:
                length, i = int.from_bytes(_bytes(data, i + 1, 4, offset), "big"), i + 5
            else:
                raise OpenPGPError(f"byte {offset}: a partial body length, which key packets may not use")
        else:  # old format: tag in bits 5-2, length type in bits 1-0
            tag, length_type = (ctb >> 2) & 0x0F, ctb & 0x03
            if length_type == 3:
                length = len(data) - i  # indeterminate: to the end of the data
            else:
                size = 1 << length_type
                length, i = int.from_bytes(_bytes(data, i, size, offset), "big"), i + size
        if tag == 0:
            raise OpenPGPError(f"byte {offset}: packet tag 0 is reserved (not OpenPGP data)")
        if i + length > len(data):
            raise OpenPGPError(f"byte {offset}: the packet says {length} bytes but only {len(data) - i} follow "
                               "(the key is cut short)")
        yield tag, data[i:i + length]
        i += length


def v4_fingerprint(body: bytes) -> str:
    """SHA-1 over 0x99, the two-byte body length and the public-key packet body; upper-case hex."""
    if not body:
        raise OpenPGPError("an empty public-key packet")
    version = body[0]
    if version != 4:
        if version in (2, 3):
            raise OpenPGPError(f"a version {version} key (obsolete, no v4 fingerprint); apt does not accept it")
        raise OpenPGPError(f"a version {version} key; only version 4 fingerprints can be pinned here")
    if len(body) < 7 or len(body) > 0xFFFF:
        raise OpenPGPError(f"a version 4 public-key packet of {len(body)} bytes is malformed")
    return hashlib.sha1(b"\x99" + len(body).to_bytes(2, "big") + body).hexdigest().upper()


def primary_fingerprints(data: bytes) -> list[str]:
    """The v4 fingerprint of every primary key in `data` (armoured or binary), in file order."""
    stripped = data.lstrip()
    if not stripped:
        raise OpenPGPError("empty: no key at all")
    if stripped.startswith(b"-----") or b"\n-----BEGIN PGP " in stripped:
        raw = dearmor(stripped)
    elif data[:1] and data[0] & 0x80:
        raw = data
    else:
        raise OpenPGPError(f"not an OpenPGP public key (starts with {_start(data)})")
    found = []
    for number, (tag, body) in enumerate(packets(raw)):
        if tag in (SECRET_KEY, SECRET_SUBKEY):
            raise OpenPGPError("holds a secret key: a private key must never be used as an apt keyring")
        if number == 0 and tag != PUBLIC_KEY:
            raise OpenPGPError(f"starts with a packet of tag {tag}, not a public key (tag 6)")
        if tag == PUBLIC_KEY:
            found.append(v4_fingerprint(body))
    if not found:
        raise OpenPGPError("holds no public key")
    return found


def _byte(data: bytes, i: int, offset: int) -> int:
    return _bytes(data, i, 1, offset)[0]


def _bytes(data: bytes, i: int, n: int, offset: int) -> bytes:
    if i + n > len(data):
        raise OpenPGPError(f"byte {offset}: the packet header is cut short")
    return data[i:i + n]


def _start(data: bytes) -> str:
    return repr(data.strip()[:24].decode("utf-8", "replace"))
