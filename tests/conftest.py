"""Shared test set-up. Keep fixtures that one test module needs in that module."""

import os

import pytest

# Tests must never pick up plugins or profiles from the developer's own set-up.
os.environ.pop("AUTOTUNE_DISABLE", None)
os.environ.pop("AUTOTUNE_PROFILE_PATH", None)
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """Each test gets its own cache directory and no autotune env leakage."""
    monkeypatch.delenv("AUTOTUNE_DISABLE", raising=False)
    monkeypatch.delenv("AUTOTUNE_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.delenv("AUTOTUNE_PROFILE_PATH", raising=False)
    monkeypatch.setenv("AUTOTUNE_CACHE_DIR", str(tmp_path / "autotune-cache"))
    # No test meets a daemon the developer runs: tests that want one start it.
    monkeypatch.setenv("AUTOTUNE_SOCKET", str(tmp_path / "no-daemon.sock"))
