"""Pure: VS Code's settings.json (JSON with comments and trailing commas), read and edited in place.

`set_remote_platforms` adds `"ALIAS": "linux"` to the `remote.SSH.remotePlatform` map for the aliases the
tool manages and removes those it added earlier that are gone; every other byte of the file stays as it
was (comments, trailing commas, CRLF, a BOM, the user's own entries and indentation).  An alias the user
set themselves (to any platform) is left alone and not claimed.  A file this parser cannot read is
refused in one line and left untouched.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from gpufleet.errors import InputError

KEY = "remote.SSH.remotePlatform"
PLATFORM = "linux"


@dataclass
class Node:
    start: int
    end: int
    kind: str  # object, array, string, number, literal
    properties: list["Property"] = field(default_factory=list)


@dataclass
class Property:
    key: str
    start: int  # where the key's opening quote is
    value: Node


_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_STRING = re.compile(r'"(?:[^"\\\x00-\x1f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"')


class _Parser:
    def __init__(self, text: str, path: str):
        self.text, self.path, self.i = text, path, 0

    def fail(self, message: str, at: int | None = None):
        at = self.i if at is None else at
        line = self.text.count("\n", 0, at) + 1
        column = at - (self.text.rfind("\n", 0, at) + 1) + 1
        raise InputError(f"{self.path}: line {line} column {column}: {message}; left untouched")

    def skip(self) -> None:
        """Blanks and comments (`//` to the end of the line, `/* ... */`)."""
        text = self.text
        while self.i < len(text):
            ch = text[self.i]
            if ch in " \t\r\n\ufeff":
                self.i += 1
            elif text.startswith("//", self.i):
                end = text.find("\n", self.i)
                self.i = len(text) if end < 0 else end
            elif text.startswith("/*", self.i):
                end = text.find("*/", self.i + 2)
                if end < 0:
                    self.fail("a /* comment is not closed")
                self.i = end + 2
            else:
                return

    def value(self) -> Node:
        self.skip()
        if self.i >= len(self.text):
            self.fail("a value is missing")
        ch, start = self.text[self.i], self.i
        if ch == "{":
            return self.container("}", "object")
        if ch == "[":
            return self.container("]", "array")
        if ch == '"':
            m = _STRING.match(self.text, self.i)
            if not m:
                self.fail("a string is not closed or has a bad escape")
            self.i = m.end()
            return Node(start, self.i, "string")
        m = _NUMBER.match(self.text, self.i)
        if m and m.end() > start:
            self.i = m.end()
            return Node(start, self.i, "number")
        for word in ("true", "false", "null"):
            if self.text.startswith(word, self.i):
                self.i += len(word)
                return Node(start, self.i, "literal")
        self.fail(f"unexpected {ch!r}")

    def container(self, close: str, kind: str) -> Node:
        node = Node(self.i, -1, kind)
        self.i += 1
        while True:
            self.skip()
            if self.text.startswith(close, self.i):  # empty, or after a trailing comma
                self.i += 1
                node.end = self.i
                return node
            if kind == "object":
                key_start = self.i
                if not self.text.startswith('"', key_start):
                    self.fail("a property name must be a string in double quotes")
                key_node = self.value()
                self.skip()
                if not self.text.startswith(":", self.i):
                    self.fail("':' expected")
                self.i += 1
                node.properties.append(Property(json.loads(self.text[key_start:key_node.end]), key_start,
                                                self.value()))
            else:
                self.value()
            self.skip()
            if self.text.startswith(",", self.i):
                self.i += 1
            elif not self.text.startswith(close, self.i):
                self.fail(f"',' or {close!r} expected")


def parse(text: str, path: str = "settings.json") -> Node | None:
    """The top-level value's tree, or None for a file with no value (empty, blanks, comments)."""
    parser = _Parser(text, path)
    parser.skip()
    if parser.i >= len(text):
        return None
    root = parser.value()
    parser.skip()
    if parser.i < len(text):
        parser.fail("text after the end of the settings")
    return root


def _indent_of(text: str, at: int) -> str:
    line_start = text.rfind("\n", 0, at) + 1
    return re.match(r"[ \t]*", text[line_start:]).group()


def _insert(text: str, obj: Node, entries: list[str], nl: str, unit: str) -> str:
    """`entries` (rendered properties) added at the end of object `obj`, in the file's own style."""
    if obj.properties:
        last = obj.properties[-1]
        indent = _indent_of(text, last.start)
        at = last.value.end
        j = at
        while j < obj.end and text[j] in " \t":
            j += 1
        trailing = text.startswith(",", j)  # a trailing comma: keep that style, after the new last entry too
        k = j + 1 if trailing else j
        while k < obj.end and text[k] in " \t":
            k += 1
        eol = text.find("\n", k)
        if eol > 0 and (text.startswith("//", k) or not text[k:eol].strip()):
            # the last entry ends its line (a comment of the user's may follow it): ours go on lines after
            line_end = eol - 1 if text[eol - 1] == "\r" else eol
            body = "".join(f"{nl}{indent}{e}" + ("," if trailing or n < len(entries) - 1 else "")
                           for n, e in enumerate(entries))
            return text[:at] + ("" if trailing else ",") + text[at:line_end] + body + text[line_end:]
        body = "".join(f",{nl}{indent}{e}" for e in entries)
        if trailing:
            return text[:j + 1] + body[1:] + "," + text[j + 1:]
        return text[:at] + body + text[at:]
    outer = _indent_of(text, obj.start)
    indent = outer + unit
    body = f"{nl}{indent}" + f",{nl}{indent}".join(entries) + f"{nl}{outer}"
    inside = text[obj.start + 1:obj.end - 1]
    if not inside.strip():  # `{}` or `{ }`: the blanks give way to the entries
        return text[:obj.start + 1] + body + text[obj.end - 1:]
    return text[:obj.start + 1] + body + text[obj.start + 1:]


def _remove(text: str, obj: Node, index: int) -> str:
    """Property `index` of `obj` taken out with its comma (its whole line where it has one to itself)."""
    props = obj.properties
    prop = props[index]
    line_start = text.rfind("\n", 0, prop.start) + 1
    whole_line = line_start > obj.start and not text[line_start:prop.start].strip()
    start = line_start if whole_line else prop.start
    end = prop.value.end
    while end < obj.end and text[end] in " \t":
        end += 1
    has_comma = text.startswith(",", end)
    if has_comma:
        end += 1
        while end < obj.end and text[end] in " \t":
            end += 1
    if whole_line:
        end += 2 if text.startswith("\r\n", end) else 1 if text.startswith("\n", end) else 0
    cut = text[:start] + text[end:]
    if has_comma or index == 0:
        return cut
    # the last one, with no comma of its own: the comma that separated it from the one before goes too
    parser = _Parser(cut, "")
    parser.i = props[index - 1].value.end
    parser.skip()
    return cut[:parser.i] + cut[parser.i + 1:]


def _unit(text: str, root: Node) -> str:
    """One level of the file's indentation: that of its first top-level entry, else 4 spaces."""
    if root.properties:
        indent = _indent_of(text, root.properties[0].start)
        if indent and text.rfind("\n", 0, root.properties[0].start) > root.start:
            return indent
    return "    "


def set_remote_platforms(text: str, managed: list[str], added_before: list[str],
                         path: str = "settings.json") -> tuple[str, list[str]]:
    """(the new text, the aliases the tool owns in the map now).

    `managed`: the aliases gpufleet writes; `added_before`: those it added on an earlier run (its record).
    InputError, naming `path`, for a file that is not a JSONC object or has the key twice or not as a map."""
    root = parse(text, path)
    nl = "\r\n" if "\r\n" in text else "\n"
    if root is None:
        if not managed:
            return text, []
        body = f",{nl}        ".join(f"{json.dumps(a)}: {json.dumps(PLATFORM)}" for a in managed)
        new = f"{{{nl}    {json.dumps(KEY)}: {{{nl}        {body}{nl}    }}{nl}}}{nl}"
        sep = "" if not text or text.endswith("\n") else nl
        return text + sep + new, list(managed)
    if root.kind != "object":
        raise InputError(f"{path}: the settings are not an object ({{ ... }}); left untouched")
    found = [p for p in root.properties if p.key == KEY]
    if len(found) > 1:
        raise InputError(f"{path}: {KEY!r} appears {len(found)} times; left untouched")
    unit = _unit(text, root)
    if not found:
        if not managed:
            return text, []
        indent = _indent_of(text, root.properties[0].start) if root.properties else unit
        inner = indent + unit
        body = f",{nl}{inner}".join(f"{json.dumps(a)}: {json.dumps(PLATFORM)}" for a in managed)
        entry = f"{json.dumps(KEY)}: {{{nl}{inner}{body}{nl}{indent}}}"
        return _insert(text, root, [entry], nl, unit), list(managed)
    platforms = found[0].value
    if platforms.kind != "object":
        raise InputError(f"{path}: {KEY!r} is not a map of host to platform; left untouched")
    present = {p.key: p for p in platforms.properties}
    # one the user set to another platform since is theirs now
    owned = [a for a in added_before if a in present and present[a].value.kind == "string"
             and json.loads(text[present[a].value.start:present[a].value.end]) == PLATFORM]
    gone = [a for a in owned if a not in managed]
    for alias in gone:  # from the end, so the earlier offsets stay right
        index = next(i for i, p in enumerate(platforms.properties) if p.key == alias)
        text = _remove(text, platforms, index)
        platforms = [p for p in parse(text, path).properties if p.key == KEY][0].value
    missing = [a for a in managed if a not in present]
    if missing:
        text = _insert(text, platforms, [f"{json.dumps(a)}: {json.dumps(PLATFORM)}" for a in missing], nl, unit)
    return text, [a for a in owned if a in managed] + missing
