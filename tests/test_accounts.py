"""Accounts: users, PINs and tokens answered from memory and reloaded on change; browser logins; the
built-in account and the last admin protected for every caller (web, CLI)."""

from __future__ import annotations

import unicodedata

import pytest

from lampctl.cli import main
from lampctl.storage.accounts import BUILTIN_USER, Accounts
from lampctl.storage.db import StoreError, connect
from lampctl.storage.user_names import NameRefused, name_key
from tests.conftest import write_config
from tests.procs import TWO_LAMPS, ServiceProcess, add_users, lampctl, service_config, wait_until


def test_accounts_users_pins_and_tokens(accounts):
    accounts.add_user("ann", "practitioner", "2468")
    with pytest.raises(StoreError, match="already exists"):
        accounts.add_user("ann", "admin", "1111")
    for name, role, pin, words in [
        ("a@b", "admin", "1234", "letters"),
        ("bob", "boss", "1234", "Role"),
        ("bob", "admin", "12", "4 to 8 digits"),
        ("bob", "admin", "12ab", "digits"),
        ("bob", "admin", "1234\n", "digits"),
    ]:
        with pytest.raises(StoreError, match=words):
            accounts.add_user(name, role, pin)
    assert accounts.check_pin("ann", "2468") == {"name": "ann", "role": "practitioner"}
    assert accounts.check_pin("ann", "0000") is None and accounts.check_pin("nobody", "2468") is None
    conn = connect(accounts.path)
    assert "2468" not in conn.execute("SELECT pin_hash FROM users").fetchone()[0]
    token = accounts.create_token("ann")
    assert token not in str(conn.execute("SELECT * FROM api_tokens").fetchall()[0][:])
    conn.close()
    assert accounts.user_for_token(token)["name"] == "ann"
    assert accounts.user_for_token("\udcff") is None and accounts.user_for_token("") is None
    accounts.add_user("boss", "admin", "1357")
    accounts.remove_user("ann")
    assert accounts.user_for_token(token) is None  # tokens go with their user, in memory at once
    with pytest.raises(StoreError, match="no user"):
        accounts.create_token("ann")


ACCEPTED_NAMES = ["Dr. Müller", "王医生", "maria schmidt", "O'Brien", "Anne-Marie", "प्रिया", "ann_2"]
REFUSED_NAMES = [
    ("a@b", "A name may hold letters, digits, spaces and . - ' _ only: 'a@b' has '@'."),
    ("", "Enter a name: letters, digits, spaces and . - ' _, at most 32 characters."),
    ("x" * 33, f"A name may have at most 32 characters: '{'x' * 33}' has 33."),
    ("  x", "A name may not begin or end with a space: '  x'."),
    ("x ", "A name may not begin or end with a space: 'x '."),
    ("x  y", "A name may not hold two spaces in a row: 'x  y'."),
    ("a\x07b", "A name may hold letters, digits, spaces and . - ' _ only: 'a\\x07b' has U+0007."),
    ("a\tb", "A name may hold letters, digits, spaces and . - ' _ only: 'a\\tb' has U+0009."),
    ("王\u3000医生", "A name may hold letters, digits, spaces and . - ' _ only: '王\\u3000医生' has U+3000."),
    ("ann\U0001f600", "A name may hold letters, digits, spaces and . - ' _ only: 'ann\U0001f600' has '\U0001f600'."),
    ("...", "A name needs at least one letter or digit: '...' has none."),
    ("System", "'System' is how the records name the system, not a person; choose another name."),
    ("e-stop button", "'e-stop button' is how the records name the system, not a person; choose another name."),
]


def test_accounts_user_names_of_any_script_with_spaces_and_punctuation_are_accepted(accounts):
    for name in ACCEPTED_NAMES:
        assert accounts.add_user(name, "practitioner", "2468") == name
        assert accounts.check_pin(name, "2468") == {"name": name, "role": "practitioner"}
    assert [u["name"] for u in accounts.users()] == sorted(ACCEPTED_NAMES)
    # 32 characters after normalisation is the limit, counted in characters, not bytes.
    assert accounts.add_user("医" * 32, "practitioner", "2468") == "医" * 32


@pytest.mark.parametrize("name,sentence", REFUSED_NAMES, ids=[repr(n)[:20] for n, _ in REFUSED_NAMES])
def test_accounts_bad_user_names_are_refused_with_one_sentence(accounts, name, sentence):
    with pytest.raises(NameRefused) as exc:
        accounts.add_user(name, "practitioner", "2468")
    assert str(exc.value) == sentence
    assert accounts.users() == []


def test_accounts_names_that_differ_only_in_case_are_one_user(accounts):
    accounts.add_user("Maria", "practitioner", "2468")
    for other in ("maria", "MARIA", " maria"):
        with pytest.raises(StoreError) as exc:
            accounts.add_user(other.strip(), "admin", "1357")
        assert str(exc.value) == (
            f"A user named 'Maria' already exists; {other.strip()!r} differs only in case, "
            "and names count as the same whatever their case."
        )
    with pytest.raises(StoreError, match=r"^A user named 'Maria' already exists\.$"):
        accounts.add_user("Maria", "admin", "1357")
    # German sharp s folds to "ss": one person, however it is spelt in capitals.
    accounts.add_user("Weiß", "practitioner", "2468")
    with pytest.raises(StoreError, match="differs only in case"):
        accounts.add_user("WEISS", "practitioner", "2468")
    assert [u["name"] for u in accounts.users()] == ["Maria", "Weiß"]
    # Logging in finds the user whatever case is typed, and answers with the name as kept.
    assert accounts.check_pin("maria", "2468") == {"name": "Maria", "role": "practitioner"}
    assert accounts.check_pin("MARIA", "2468") == {"name": "Maria", "role": "practitioner"}
    assert accounts.check_pin("maria", "1357") is None
    assert accounts.create_token("mArIa") and accounts.remove_user("MARIA") == "Maria"
    assert accounts.user("Maria") is None


def test_accounts_an_nfd_name_is_the_same_as_its_nfc_form(accounts):
    nfc, nfd = "Müller", unicodedata.normalize("NFD", "Müller")
    assert nfc != nfd and len(nfd) == len(nfc) + 1
    assert name_key(nfd) == name_key(nfc) == name_key("MÜLLER")
    assert accounts.add_user(nfd, "practitioner", "2468") == nfc  # kept in NFC
    assert [u["name"] for u in accounts.users()] == [nfc]
    with pytest.raises(StoreError, match=r"^A user named 'Müller' already exists\.$"):
        accounts.add_user(nfc, "practitioner", "1357")
    assert accounts.check_pin(nfd, "2468")["name"] == nfc
    # 32 characters after normalisation: 32 decomposed ü are 64 code points before it.
    assert accounts.add_user(unicodedata.normalize("NFD", "ü" * 32), "practitioner", "2468") == "ü" * 32


def test_accounts_typographic_apostrophe_is_the_plain_one(accounts):
    assert accounts.add_user("O\u2019Brien", "practitioner", "2468") == "O'Brien"  # as an iPad types it
    assert accounts.check_pin("o\u2019brien", "2468")["name"] == "O'Brien"


def test_accounts_builtin_account_is_refused_in_any_case(accounts):
    for name in ("CLI", "Cli"):
        with pytest.raises(StoreError, match="^cli is the built-in account of the command line; it cannot be added"):
            accounts.add_user(name, "admin", "1234")


def test_accounts_names_from_before_the_rule_that_differ_only_in_case_stay(accounts):
    """Nothing is refused afresh: both stay and each logs in as typed; a third spelling finds neither."""
    conn = connect(accounts.path)
    pin_hash = __import__("werkzeug.security").security.generate_password_hash("2468")
    for name in ("Maria", "maria"):
        conn.execute(
            "INSERT INTO users (name, role, pin_hash, created_at) VALUES (?, 'practitioner', ?, 'x')", (name, pin_hash)
        )
    conn.close()
    accounts.reload()
    assert [u["name"] for u in accounts.users()] == ["Maria", "maria"]
    assert accounts.check_pin("Maria", "2468")["name"] == "Maria"
    assert accounts.check_pin("maria", "2468")["name"] == "maria"
    assert accounts.check_pin("MARIA", "2468") is None and accounts.find("MARIA") is None
    with pytest.raises(StoreError) as exc:
        accounts.remove_user("MARIA")
    assert str(exc.value) == (
        "'MARIA' could be any of 'Maria', 'maria', whose names differ only in case; give the "
        "name exactly as 'lampctl user list' shows it."
    )
    with pytest.raises(StoreError, match="differs only in case"):
        accounts.add_user("MARIA", "practitioner", "2468")
    assert accounts.remove_user("maria") == "maria"
    assert [u["name"] for u in accounts.users()] == ["Maria"]


def test_accounts_changes_are_audited_through_the_usage_log(accounts, usage_log):
    accounts.add_user("boss", "admin", "1357", by="root")
    accounts.add_user("ann", "practitioner", "2468", by="boss")
    accounts.set_pin("ann", "1111", by="boss")
    accounts.set_role("ann", "admin", by="boss")
    accounts.remove_user("ann", by="boss")
    assert usage_log.flush(5)
    assert [(e["who"], e["why"]) for e in reversed(usage_log.events())] == [
        ("root", "user boss added as admin"),
        ("boss", "user ann added as practitioner"),
        ("boss", "PIN of ann reset"),
        ("boss", "role of ann set to admin"),
        ("boss", "user ann removed"),
    ]


def test_accounts_reload_sees_changes_made_by_another_process(cfg, accounts):
    accounts.start()
    try:
        other = Accounts(cfg.service.database)  # as `lampctl user add` / `token create` would
        other.add_user("bob", "practitioner", "2468")
        token = other.create_token("bob")
        wait_until(lambda: accounts.user_for_token(token), 10, "the new token seen by the running service")
        other.add_user("boss", "admin", "1357")
        other.remove_user("bob")
        wait_until(lambda: accounts.user("bob") is None, 10, "the removal seen by the running service")
        assert accounts.user_for_token(token) is None
    finally:
        accounts.close()


def test_accounts_reload_only_when_the_accounts_changed(accounts, usage_log):
    accounts.add_user("ann", "practitioner", "2468")
    usage_log.event(None, None, None, "system", "not an account change")
    assert usage_log.flush(5)
    assert accounts.reload(only_if_changed=True) is False
    Accounts(accounts.path).set_pin("ann", "1111")
    assert accounts.reload(only_if_changed=True) is True
    assert accounts.check_pin("ann", "1111")


def test_accounts_logins_end_on_logout_removal_pin_change_and_expiry(accounts, clock):
    accounts.add_user("boss", "admin", "1357")
    accounts.add_user("ann", "practitioner", "2468")
    first, second = accounts.create_login("ann"), accounts.create_login("ann")
    assert accounts.user_for_login(first)["name"] == "ann"
    accounts.end_login(first)
    assert accounts.user_for_login(first) is None and accounts.user_for_login(second)["name"] == "ann"
    # Persisted: a restarted service knows the live logins, and not the ended one.
    restarted = Accounts(accounts.path, wall=clock.wall)
    assert restarted.user_for_login(second)["name"] == "ann" and restarted.user_for_login(first) is None
    accounts.set_pin("ann", "1111")
    assert accounts.user_for_login(second) is None
    third = accounts.create_login("ann")
    clock.advance(12 * 3600 + 1)
    assert accounts.user_for_login(third) is None
    fourth = accounts.create_login("ann")
    accounts.remove_user("ann")
    assert accounts.user_for_login(fourth) is None
    for bad in (None, "", "forged"):
        assert accounts.user_for_login(bad) is None


def test_accounts_builtin_account_cannot_be_added_removed_given_a_pin_or_log_in(accounts):
    token = accounts.replace_system_token(BUILTIN_USER)
    assert accounts.user_for_token(token) == {
        "name": "cli",
        "role": "admin",
        "created_at": accounts.user("cli")["created_at"],
    }
    for action, words in [
        (lambda: accounts.add_user("cli", "admin", "1234"), "cannot be added"),
        (lambda: accounts.remove_user("cli"), "cannot be removed"),
        (lambda: accounts.set_pin("cli", "1234"), "cannot be given a PIN"),
        (lambda: accounts.set_role("cli", "practitioner"), "cannot be changed"),
        (lambda: accounts.create_login("cli"), "cannot be logged in with"),
        (lambda: accounts.create_token("cli"), "cannot be given another token"),
    ]:
        with pytest.raises(StoreError, match=f"^cli is the built-in account of the command line; it {words}"):
            action()
    assert accounts.check_pin("cli", "!") is None
    assert accounts.user_for_token(token) is not None
    newer = accounts.replace_system_token(BUILTIN_USER)
    assert accounts.user_for_token(token) is None and accounts.user_for_token(newer)["name"] == "cli"


def test_accounts_builtin_row_from_an_older_version_is_put_right(accounts, clock):
    conn = connect(accounts.path)
    conn.execute(
        "INSERT INTO users (name, role, pin_hash, created_at) VALUES ('cli', 'practitioner', ?, 'x')",
        (__import__("werkzeug.security").security.generate_password_hash("1234"),),
    )
    conn.close()
    accounts.reload()
    assert accounts.check_pin("cli", "1234") is None  # never logs in, whatever its row says
    accounts.replace_system_token()
    assert accounts.user("cli")["role"] == "admin"


def test_accounts_last_admin_cannot_be_removed_or_demoted(accounts):
    accounts.replace_system_token()  # the built-in admin does not count: it cannot log in
    accounts.add_user("boss", "admin", "1357")
    accounts.add_user("ann", "practitioner", "2468")
    with pytest.raises(StoreError, match="^boss is the last admin and cannot be removed; make another user admin"):
        accounts.remove_user("boss")
    with pytest.raises(StoreError, match="^boss is the last admin and cannot be demoted"):
        accounts.set_role("boss", "practitioner")
    accounts.set_role("ann", "admin")
    accounts.set_role("boss", "practitioner")
    with pytest.raises(StoreError, match="ann is the last admin"):
        accounts.remove_user("ann")
    accounts.remove_user("boss")
    assert [u["name"] for u in accounts.users()] == ["ann", "cli"]


def test_cli_user_remove_refuses_builtin_and_last_admin(tmp_path, capsys):
    config = str(write_config(tmp_path))
    assert main(["user", "add", "boss", "--role", "admin", "--pin", "1357", "--config", config]) == 0
    for argv, message in [
        (["user", "remove", "cli"], "lampctl: cli is the built-in account of the command line; it cannot be removed."),
        (
            ["user", "add", "cli", "--role", "admin", "--pin", "1234"],
            "lampctl: cli is the built-in account of the command line; it cannot be added.",
        ),
        (
            ["user", "remove", "boss"],
            "lampctl: boss is the last admin and cannot be removed; make another user admin first.",
        ),
    ]:
        capsys.readouterr()
        assert main(argv + ["--config", config]) == 1
        assert capsys.readouterr().err.strip() == message


def test_cli_user_add_takes_names_of_any_script_and_refuses_bad_ones(tmp_path, capsys):
    config = str(write_config(tmp_path))
    nfd = unicodedata.normalize("NFD", "Dr. Müller")
    assert main(["user", "add", nfd, "--role", "admin", "--pin", "1357", "--config", config]) == 0
    assert capsys.readouterr().out == "added admin Dr. Müller\n"  # kept in NFC
    assert main(["user", "add", "王医生", "--role", "practitioner", "--pin", "2468", "--config", config]) == 0
    capsys.readouterr()
    assert main(["user", "add", "dr. müller", "--role", "practitioner", "--pin", "2468", "--config", config]) == 1
    assert capsys.readouterr().err == (
        "lampctl: A user named 'Dr. Müller' already exists; 'dr. müller' differs only "
        "in case, and names count as the same whatever their case.\n"
    )
    for name, sentence in [
        ("a@b", "A name may hold letters, digits, spaces and . - ' _ only: 'a@b' has '@'."),
        ("x  y", "A name may not hold two spaces in a row: 'x  y'."),
    ]:
        with pytest.raises(SystemExit) as exc:
            main(["user", "add", name, "--role", "practitioner", "--pin", "2468", "--config", config])
        assert exc.value.code == 2
        assert capsys.readouterr().err.splitlines()[-1] == f"lampctl user add: error: argument name: {sentence}"
    assert main(["token", "create", "DR. MÜLLER", "--config", config]) == 0
    capsys.readouterr()
    assert main(["user", "remove", "王医生", "--config", config]) == 0
    assert capsys.readouterr().out == "removed 王医生\n"


@pytest.mark.integration
def test_accounts_running_service_sees_cli_user_and_token_changes(tmp_path):
    config = service_config(tmp_path, TWO_LAMPS)
    tokens = add_users(config)
    svc = ServiceProcess(config).start()
    try:
        # Added by another process while the service runs: accepted once the service reloads.
        lampctl("user", "add", "bob", "--role", "practitioner", "--pin", "1357", config=config)
        bob = lampctl("token", "create", "bob", config=config).stdout.strip()
        wait_until(lambda: svc.get("/api/lamps", bob)[0] == 200, 15, "bob's new token accepted")
        lampctl("user", "remove", "bob", config=config)
        wait_until(lambda: svc.get("/api/lamps", bob)[0] == 401, 15, "bob's token refused after removal")
        refused = lampctl("user", "remove", "cli", config=config, check=False)
        assert refused.returncode == 1 and "built-in account" in refused.stderr
        assert lampctl("stop-all", config=config).returncode == 0  # the built-in account still works
        assert svc.get("/api/lamps", tokens["ann"])[0] == 200
    finally:
        svc.stop()
