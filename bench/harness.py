"""Shared pieces of the benchmarks: the simulator process, measured child processes,
summary lines, JSON results and a description of the machine.

Rules every benchmark follows (docs/BENCHMARKS.md): loopback only; every process it
starts is ended by it (context managers, and a parent-death signal so that even a
killed benchmark leaves nothing behind); every wait has a deadline; every figure is a
ratio against a baseline measured in the same run.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import multiprocessing
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from killswitch.exchange.signing import generate_private_key, private_key_pem, public_key_pem

RESULTS = Path(__file__).parent / "results"
_PR_SET_PDEATHSIG = 1


# -- processes -------------------------------------------------------------------------


def die_with_parent() -> None:
    """Ask Linux to SIGTERM this process when its parent dies (no orphans, ever)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def cpus() -> list[int]:
    """The CPUs this process may run on, sorted."""
    return sorted(os.sched_getaffinity(0))


def pin(pid: int, which: set[int]) -> None:
    """Pin a process to CPUs (ignored when there is only one)."""
    if len(cpus()) > 1:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(pid, which)


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM, wait, then SIGKILL: a process this benchmark started never outlives it."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Simulator:
    """``killswitch simulate-exchange`` in its own process, pinned to the first CPU.

    Clients are registered over the admin API (``add_client``); ``admin`` is an
    unsigned httpx client on its base URL.
    """

    def __init__(self, *extra_args: str, pin_first_cpu: bool = True) -> None:
        self.extra_args = list(extra_args)
        self.pin_first_cpu = pin_first_cpu
        self.proc: subprocess.Popen[str] | None = None
        self.base_url = ""

    def __enter__(self) -> Simulator:
        args = [sys.executable, "-m", "killswitch", "simulate-exchange", "--port", "0"]
        self.proc = subprocess.Popen(
            [*args, *self.extra_args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - a prctl call only, no locks taken
        )
        try:
            if self.pin_first_cpu:
                pin(self.proc.pid, {cpus()[0]})
            self.base_url = _listening_url(_readline(self.proc, 30.0))
        except BaseException:
            stop_process(self.proc)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def admin(self, timeout: float = 60.0) -> httpx.Client:
        """A synchronous admin client (caller closes it)."""
        return httpx.Client(base_url=self.base_url, timeout=timeout)


def _listening_url(line: str) -> str:
    if "listening on" not in line:
        raise RuntimeError(f"simulator did not start: {line!r}")
    return line.rsplit(" ", 1)[1].strip()


def _readline(proc: subprocess.Popen[str], timeout: float) -> str:
    """The first stdout line of ``proc`` within ``timeout`` seconds."""
    import selectors

    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise RuntimeError(f"no output within {timeout}s")
    return proc.stdout.readline()


def new_key() -> tuple[bytes, bytes]:
    """A fresh P-256 key pair: (private PEM, public PEM)."""
    key = generate_private_key()
    return private_key_pem(key), public_key_pem(key)


def register(admin: httpx.Client, api_key: str, public_pem: bytes, name: str) -> None:
    """Register a client on the simulator, unlimited."""
    body = {"api_key": api_key, "public_key": public_pem.decode(), "name": name}
    admin.post("/_admin/clients", json=body).raise_for_status()


def seed(admin: httpx.Client, api_key: str, symbol: str, count: int) -> list[int]:
    """``count`` open orders for ``api_key`` on ``symbol``; their ids."""
    ids: list[int] = []
    while count > 0:  # in chunks: one admin call holds the simulator's loop
        n = min(count, 20_000)
        answer = admin.post(
            "/_admin/orders", json={"api_key": api_key, "symbol": symbol, "count": n}
        )
        answer.raise_for_status()
        ids += answer.json()["order_ids"]
        count -= n
    return ids


def open_count(admin: httpx.Client, api_key: str) -> int:
    """Open orders the simulator holds for ``api_key``."""
    answer = admin.post("/_admin/orders/open", json={"api_key": api_key})
    answer.raise_for_status()
    return int(answer.json()["count"])


def in_child(
    target: Callable[..., dict[str, Any]],
    *args: Any,
    timeout: float = 300.0,
    cpu: int | None = None,
) -> dict[str, Any]:
    """Run ``target(*args)`` in a fresh (spawned) Python process and return its dict.

    The child dies with this process; past ``timeout`` it is killed and this raises.
    ``cpu`` pins it to one CPU.
    """
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child_main, args=(child, target, args), daemon=True)
    process.start()
    child.close()
    try:
        if cpu is not None and process.pid is not None:
            pin(process.pid, {cpu})
        if not parent.poll(timeout):
            raise TimeoutError(f"{getattr(target, '__name__', target)} took over {timeout}s")
        try:
            ok, value = parent.recv()
        except EOFError:
            process.join(5)
            raise RuntimeError(f"child died (exit code {process.exitcode})") from None
        if not ok:
            raise RuntimeError(f"child failed: {value}")
        return dict(value)
    finally:
        process.join(5)
        if process.is_alive():
            process.kill()
            process.join(5)
        parent.close()


def _child_main(conn: Any, target: Callable[..., dict[str, Any]], args: tuple[Any, ...]) -> None:
    die_with_parent()
    try:
        result: tuple[bool, Any] = (True, target(*args))
    except BaseException as exc:  # report, never hang the parent
        import traceback

        result = (False, "".join(traceback.format_exception(exc))[-4000:])
    conn.send(result)
    conn.close()


# -- figures and results ---------------------------------------------------------------


def summary(name: str, value: str, goal: str | None = None, ok: bool | None = None) -> str:
    """Print and return one figure line: ``name: value (goal ...)``."""
    verdict = "" if ok is None else (" ok" if ok else " MISSED")
    line = f"{name}: {value}" + (f" (goal {goal}{verdict})" if goal else "")
    print(line, flush=True)
    return line


def machine() -> dict[str, Any]:
    """Where the figures come from: nproc, CPU model, Python, memory."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "nproc": len(cpus()),
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "kernel": platform.release(),
        "memory_mb": mem_kb // 1024,
    }


def write_result(name: str, data: dict[str, Any], argv: list[str] | None = None) -> Path:
    """Write ``bench/results/<name>.json`` with the machine and the command added."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    record = {
        "benchmark": name,
        "command": " ".join(["python -m bench", name, *(argv or [])]),
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        **data,
    }
    out.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return out


@contextlib.contextmanager
def temp_dir() -> Iterator[Path]:
    """A temporary directory removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="killswitch-bench-") as tmp:
        yield Path(tmp)


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q * (len(ordered) - 1))))
    return ordered[rank]
