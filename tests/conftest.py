"""Hermetic tests: no test reads or writes the real ~/.ssh or $HOME."""
import os

import pytest


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.delenv("FABRIC_INVENTORY", raising=False)
    return home


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
