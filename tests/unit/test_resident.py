"""The resident's pure parts: where it listens, which code it serves, its wire."""

from __future__ import annotations

import os
import socket
import sys
import types
from pathlib import Path

import pytest

from provisioner import resident


def _package(root: Path) -> Path:
    package = root / "provisioner"
    (package / "engine").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "engine" / "api.py").write_text("A = 1\n")
    return package


def test_the_digest_changes_with_any_of_provs_files_and_with_the_python(tmp_path: Path) -> None:
    package = _package(tmp_path)
    first = resident.fingerprint(str(package), "/usr/bin/python3", "3.13")
    assert resident.fingerprint(str(package), "/usr/bin/python3", "3.13") == first
    assert resident.fingerprint(str(package), "/other/python3", "3.13") != first
    assert resident.fingerprint(str(package), "/usr/bin/python3", "3.14") != first
    api = package / "engine" / "api.py"
    api.write_text("A = 2\n")  # same size: the mtime tells it
    os.utime(api, ns=(1, 1))
    assert resident.fingerprint(str(package), "/usr/bin/python3", "3.13") != first
    (package / "__pycache__").mkdir()
    changed = resident.fingerprint(str(package), "/usr/bin/python3", "3.13")
    (package / "__pycache__" / "x.py").write_text("")
    assert resident.fingerprint(str(package), "/usr/bin/python3", "3.13") == changed


def test_a_run_under_other_python_variables_goes_to_another_resident() -> None:
    """PYTHONPATH and its kin change what a run imports: a resident started
    without them must not serve a run that has them (nor the other way)."""
    plain = {"XDG_RUNTIME_DIR": "/run/user/1000", "HOME": "/home/u"}
    assert resident.socket_path({**plain, "HOME": "/elsewhere"}) == resident.socket_path(plain)
    with_path = {**plain, "PYTHONPATH": "/tmp/fake"}
    assert resident.socket_path(with_path) != resident.socket_path(plain)
    assert resident.socket_path({**plain, "PYTHONPATH": "/tmp/other"}) != resident.socket_path(
        with_path
    )
    assert resident.socket_path({**plain, "PYTHONSAFEPATH": "1"}) != resident.socket_path(plain)
    assert resident.python_environ({**with_path, "PROV_HOME": "/x"}) == {"PYTHONPATH": "/tmp/fake"}


def test_only_a_private_directory_of_the_users_own_is_used(tmp_path: Path) -> None:
    uid = os.getuid()
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o700)
    mine.chmod(0o700)
    assert resident.private_dir(str(mine), uid)
    assert not resident.private_dir(str(mine), uid + 1)  # another user's
    mine.chmod(0o750)
    assert not resident.private_dir(str(mine), uid)
    mine.chmod(0o700)
    link = tmp_path / "link"
    link.symlink_to(mine)
    assert not resident.private_dir(str(link), uid)
    (tmp_path / "file").write_text("")
    assert not resident.private_dir(str(tmp_path / "file"), uid)
    assert not resident.private_dir(str(tmp_path / "absent"), uid)


def test_the_run_dir_is_in_xdg_runtime_dir_when_it_is_absolute() -> None:
    assert resident.run_dir({"XDG_RUNTIME_DIR": "/run/user/7"}, 7) == "/run/user/7/prov-7"
    assert resident.run_dir({"XDG_RUNTIME_DIR": "run/user/7"}, 7) == "/tmp/prov-7"
    assert resident.run_dir({}, 0) == "/tmp/prov-0"


def test_off_only_when_asked() -> None:
    assert resident.enabled({})
    assert resident.enabled({"PROV_RESIDENT": "1"})
    assert not resident.enabled({"PROV_RESIDENT": "0"})


def test_messages_cross_the_socket_whole_and_an_oversized_one_is_refused() -> None:
    left, right = socket.socketpair()
    with left, right:
        value = ("exec", ["ssh", "-F", "x"], {"K": "v" * 100_000}, "/w")
        left.sendall(resident.encode(value))
        assert resident.read_message(right) == value
        left.sendall((resident._MAX_REQUEST + 1).to_bytes(4, "big"))
        with pytest.raises(EOFError):
            resident.read_message(right)
        left.close()
        with pytest.raises(EOFError):
            resident.read_message(right)


def test_exit_codes_are_what_python_makes_of_systemexit() -> None:
    assert resident.exit_code(None) == 0
    assert resident.exit_code(4) == 4
    assert resident.exit_code(256 + 3) == 3
    assert resident.exit_code("a message") == 1


def test_the_program_name_is_the_one_click_gives_a_run_of_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "__main__", types.SimpleNamespace(__package__=None))
    assert resident._called_as(["/venv/bin/prov", "ls"]) == "prov"
    package = types.SimpleNamespace(__package__="provisioner")
    monkeypatch.setitem(sys.modules, "__main__", package)
    assert resident._called_as(["/src/provisioner/__main__.py"]) == "python -m provisioner"


def test_a_run_not_served_says_so_and_off_says_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROV_RESIDENT", raising=False)
    assert resident.describe().startswith("none served this run")
    monkeypatch.setenv("PROV_RESIDENT", "0")
    assert resident.describe().startswith("off")
