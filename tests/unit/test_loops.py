"""The daemon's event loop choice (killswitch.loops)."""

from __future__ import annotations

import asyncio
import builtins
from typing import Any

import pytest

from killswitch.config import ConfigError, Settings
from killswitch.daemon import run
from killswitch.loops import EventLoopUnavailable, loop_factory, loop_name


def test_auto_and_uvloop_make_uvloop_loops() -> None:
    for choice in ("auto", "uvloop"):
        factory = loop_factory(choice)
        assert factory is not None
        loop = factory()
        try:
            assert loop_name(loop) == "uvloop"
        finally:
            loop.close()


def test_asyncio_is_the_standard_loop() -> None:
    assert loop_factory("asyncio") is None
    with asyncio.Runner() as runner:
        assert runner.run(_running_name()) == "asyncio"


async def _running_name() -> str:
    return loop_name()


def test_no_running_loop_is_named_none() -> None:
    assert loop_name() == "none"


def _without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def fake_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "uvloop":
            raise ImportError("No module named 'uvloop'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)


def test_auto_falls_back_to_asyncio_without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    """``auto`` means "uvloop if it can run": missing, or there but not importable (a build
    for another platform or Python), the daemon runs on asyncio's loop rather than
    refusing to start; ``uvloop`` asked for by name is an error (below)."""
    _without_uvloop(monkeypatch)
    assert loop_factory("auto") is None


def test_uvloop_asked_for_and_missing_is_a_clear_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _without_uvloop(monkeypatch)
    with pytest.raises(EventLoopUnavailable, match=r"runtime\.event_loop"):
        loop_factory("uvloop")
    settings = Settings(
        accounts=[{"id": "a", "api_key": "k", "private_key": "x"}],
        runtime={"event_loop": "uvloop"},
    )
    with pytest.raises(ConfigError, match="uvloop is not installed"):
        run(settings)
