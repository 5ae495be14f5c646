"""authorized_keys: parse lines, validate keys, sync wanted/revoked keys and keep every other line as it is."""
import re
from pathlib import Path

import pytest

from gpufleet import authorized_keys as ak
from gpufleet.errors import InputError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "authorized_keys"
TEAM = (FIXTURES / "team.authorized_keys").read_text(encoding="utf-8")
NEW = ak.parse_public_key((FIXTURES / "new-ed25519.pub").read_text().strip())
DAVE = ak.parse_public_key((FIXTURES / "dave-rsa.pub").read_text().strip())
ALICE_BLOB = "AAAAC3NzaC1lZDI1NTE5AAAAIErFchO6l9nNIf6OWsloPgN4cDpFFxT4QhIleilxaNGz"
ALICE = ak.PublicKey("ssh-ed25519", ALICE_BLOB, "alice@laptop")


def test_team_file_lines():
    parsed = [ak.parse_line(line) for line in TEAM.split("\n")[:-1]]
    keys = [(n, k) for n, (k, _) in enumerate(parsed, 1) if k]
    assert [n for n, _ in keys] == [3, 4, 7, 8, 9, 10, 11, 13]
    assert [k.keytype for _, k in keys] == ["ssh-ed25519", "ssh-ed25519", "ssh-rsa", "ssh-ed25519",
                                           "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp521",
                                           "sk-ssh-ed25519@openssh.com", "ssh-ed25519"]
    by_line = dict(keys)
    assert by_line[4].options == 'from="10.0.0.0/8,127.0.0.1",no-agent-forwarding'
    assert by_line[8].options.startswith('restrict,command="borg serve --restrict-to-path /srv/backup')
    assert by_line[8].comment == "backup from carol"
    assert by_line[10].comment == ""  # an ecdsa key with no comment
    assert by_line[13].identity == by_line[3].identity  # same key twice, once with an option
    assert [(n, p) for n, (_, p) in enumerate(parsed, 1) if p] == [(12, "key blob is not valid base64")]


# line → (keytype or None, problem regex or None)
LINES = [
    ("", None, None),
    ("   # indented comment", None, None),
    (f"ssh-ed25519 {ALICE_BLOB}", "ssh-ed25519", None),
    (f"ssh-ed25519\t{ALICE_BLOB}\tcomment with\ttabs", "ssh-ed25519", None),
    (f'command="echo \\"hi there\\"",no-pty ssh-ed25519 {ALICE_BLOB} x', "ssh-ed25519", None),
    (f"ssh-rsa {ALICE_BLOB} mislabelled", None, r"^key blob says 'ssh-ed25519', the line says 'ssh-rsa'$"),
    ("ssh-ed25519 AAAAC3Nza... truncated", None, r"not valid base64"),
    ("ssh-ed25519 AAAA", None, r"truncated"),
    ("ssh-ed25519", None, r"a key type without a key"),
    (f"ssh-ed2519 {ALICE_BLOB}", None, r"^unknown key type 'ssh-ed2519'$"),
    (f"\ufeffssh-ed25519 {ALICE_BLOB}", None, r"^unknown key type '\\ufeffssh-ed25519'$"),
    (f"no-pty ssh-foo {ALICE_BLOB}", None, r"^unknown key type 'ssh-foo'$"),
    ('restrict,command="x y"', None, r"^no key after"),
    (ALICE_BLOB, None, r"^a key blob without its key type"),
    ("-----BEGIN OPENSSH PRIVATE KEY-----", None, r"private key, not a public key \(use the \.pub file\)"),
    ("---- BEGIN SSH2 PUBLIC KEY ----", None, r"RFC 4716"),
]


@pytest.mark.parametrize("line,keytype,problem", LINES, ids=[f"line{i}" for i in range(len(LINES))])
def test_parse_line(line, keytype, problem):
    key, reason = ak.parse_line(line)
    assert (key.keytype if key else None) == keytype
    if problem is None:
        assert reason is None
    else:
        assert reason and "\n" not in reason and re.search(problem, reason), reason


def test_parse_public_key_names_its_source():
    with pytest.raises(InputError, match=r"^hosts\.toml: local\.public_keys\[0\]: key blob is not valid base64$"):
        ak.parse_public_key("ssh-ed25519 AAAAC3Nza...", source="hosts.toml: local.public_keys[0]")
    assert NEW.comment == "gpufleet@workstation" and NEW.line() == (FIXTURES / "new-ed25519.pub").read_text().strip()


@pytest.mark.parametrize("name", ["team.authorized_keys", "team-crlf-no-eol.authorized_keys"])
def test_sync_adds_once_and_keeps_every_line(name):
    text = (FIXTURES / name).read_bytes().decode("utf-8")
    result = ak.sync(text, [NEW, ALICE], [])
    newline = "\r\n" if "\r\n" in text else "\n"
    base = text if text.endswith("\n") else text + newline
    assert result.text == base + NEW.line() + newline  # alice is already there: not added twice
    assert result.added == [NEW] and result.removed == [] and result.remaining == 9
    assert result.problems == ["12: key blob is not valid base64"]
    again = ak.sync(result.text, [NEW, ALICE], [])
    assert again.text == result.text and again.added == []


def test_sync_revokes_every_copy_and_keeps_the_rest():
    alice = ak.PublicKey("ssh-ed25519", ALICE_BLOB)  # comment and options do not matter
    result = ak.sync(TEAM, [], [alice, DAVE])
    lines = TEAM.split("\n")
    assert result.text == "\n".join(l for l in lines if ALICE_BLOB not in l and DAVE.blob not in l)
    assert [k.comment for k in result.removed] == ["alice@laptop", "dave@ws-01", "alice again, with an option"]
    assert result.remaining == 5


def test_sync_with_nothing_to_do_changes_nothing():
    text = (FIXTURES / "team-crlf-no-eol.authorized_keys").read_bytes().decode("utf-8")
    assert ak.sync(text, [ALICE], []).text == text  # no final newline added for nothing
    assert ak.sync("", [], []).text == ""


def test_sync_into_empty_and_into_comment_only_files():
    assert ak.sync("", [NEW], []).text == NEW.line() + "\n"
    result = ak.sync("# keys\n#ssh-ed25519 AAAA commented out", [NEW], [])
    assert result.text == "# keys\n#ssh-ed25519 AAAA commented out\n" + NEW.line() + "\n"
    assert result.remaining == 1 and result.problems == []


def test_sync_splits_lines_like_sshd_only_on_newline():
    # a comment with a form feed or U+2028 is still one line for sshd: revoking removes all of it
    text = f"ssh-ed25519 {ALICE_BLOB} alice\x0cold\u2028laptop\n{DAVE.line()}\n"
    result = ak.sync(text, [], [ALICE])
    assert result.text == DAVE.line() + "\n" and result.problems == [] and len(result.removed) == 1


# --- people: a container holds its users' keys and the admins', and loses a person the tool had put there ---

BOB = ak.PublicKey("ssh-rsa", DAVE.blob, "bob@desk")
HAND = f"# keys below were added by hand\nssh-ed25519 {NEW.blob} hand-added\n"
# (what is in the file, the container's users' keys now, what the record says the tool put there) -> the result
PEOPLE_CASES = [
    ("users added", HAND, [ALICE, BOB], [], HAND + ALICE.line() + "\n" + BOB.line() + "\n"),
    ("a person left: their key goes", HAND + ALICE.line() + "\n" + BOB.line() + "\n", [ALICE], [ALICE, BOB],
     HAND + ALICE.line() + "\n"),
    ("everyone left", HAND + ALICE.line() + "\n" + BOB.line() + "\n", [], [ALICE, BOB], HAND),
    ("a key never recorded stays (added by hand)", HAND + BOB.line() + "\n", [ALICE], [], HAND + BOB.line() + "\n"
     + ALICE.line() + "\n"),
    ("a recorded key that is also a hand-added line: ours, it goes", HAND, [], [NEW], "# keys below were added by hand\n"),
    ("nothing to do", HAND + ALICE.line() + "\n", [ALICE], [ALICE], HAND + ALICE.line() + "\n"),
]


@pytest.mark.parametrize("existing,users,recorded,expected", [c[1:] for c in PEOPLE_CASES],
                         ids=[c[0] for c in PEOPLE_CASES])
def test_container_keys_hold_its_users_and_lose_the_people_who_left(existing, users, recorded, expected):
    add, revoke = ak.container_keys([], users, [], recorded)
    assert ak.sync(existing, add, revoke).text == expected


def test_an_admin_key_that_was_also_a_persons_stays_and_a_revoked_persons_key_goes():
    add, revoke = ak.container_keys([ALICE], [], [], [ALICE, BOB])
    assert ak.sync(ALICE.line() + "\n" + BOB.line() + "\n", add, revoke).text == ALICE.line() + "\n"
    add, revoke = ak.container_keys([], [ALICE], [ALICE], [])
    assert ak.sync(ALICE.line() + "\n", [k for k in add if k != ALICE], revoke).text == ""


def test_people_record_round_trip_and_refusals():
    text = ak.render_people_record({"dev": [ALICE, BOB, ALICE], "empty": []})
    assert ak.parse_people_record(text, "/r") == {"dev": [ak.PublicKey(ALICE.keytype, ALICE.blob),
                                                          ak.PublicKey(BOB.keytype, BOB.blob)]}
    for broken, message in (("{", r"/r: line 1 column 2: Expecting property name"),
                            ("[]", r'/r: not a record gpufleet wrote \(no "containers" table\)'),
                            ('{"containers": {"dev": "x"}}', r"/r: containers\.dev is not a list of keys"),
                            ('{"containers": {"dev": ["ssh-ed25519 AAAA"]}}', r"containers\.dev: 'ssh-ed25519 AAAA' is "
                                                                              r"not a key type and blob")):
        with pytest.raises(InputError, match=message):
            ak.parse_people_record(broken, "/r")
