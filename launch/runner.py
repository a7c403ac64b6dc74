"""How the launch/ scripts run commands: ``pardiff`` (one child process per command, under ``mpiexec -n
RANKS`` when ranks are given; its wall time returned, a failure stopping the script with the child's
stderr), ``simulate`` (its report) and, under both, ``run_child``.

A script stopped by SIGTERM (``timeout``, a batch system's time limit) first stops the commands it
is running: left alone, an ``mpiexec`` job outlives its script, holding the GPU and the cores the
next step needs (on a device call, an evaluation that followed a timed-out sweep ran beside the
sweep's orphaned ranks and missed its own limit). ``mpiexec`` passes the signal on to its ranks.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

_running: set[subprocess.Popen] = set()     # children of every thread (the sweeps run settings side by side)
_lock = threading.RLock()                   # re-entrant: SIGTERM may arrive while the main thread holds it


def _stop_children(signum, frame):
    with _lock:
        children = list(_running)
    for child in children:
        child.terminate()
    raise SystemExit(128 + signum)


def stop_children_on_sigterm() -> None:
    """Make SIGTERM stop this script's running children, then the script (exit status 143). Each
    script's main() calls it (the main thread's job: signal handlers belong to it); importing this
    module changes nothing, so a test that imports a script keeps pytest's own handling."""
    signal.signal(signal.SIGTERM, _stop_children)


def run_child(cmd: list, cwd=None, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
              timeout: float | None = None) -> subprocess.CompletedProcess:
    """``cmd`` as a child this module stops on SIGTERM; past ``timeout`` seconds it is stopped too
    and the return code is 124 (what ``timeout`` returns)."""
    with subprocess.Popen(cmd, cwd=cwd, stdout=stdout, stderr=stderr, text=True) as child:
        with _lock:
            _running.add(child)
        try:
            out, err = child.communicate(timeout=timeout)
            rc = child.returncode
        except subprocess.TimeoutExpired:
            child.terminate()
            try:
                out, err = child.communicate(timeout=30)
            except subprocess.TimeoutExpired:       # deaf to SIGTERM: as the old subprocess.run did
                child.kill()
                out, err = child.communicate()
            rc = 124
        finally:
            with _lock:
                _running.discard(child)
    return subprocess.CompletedProcess(cmd, rc, out, err)


def pardiff(ranks: int | None, *args, cwd) -> float:
    """``[mpiexec -n ranks] python -m pardiff args...`` in ``cwd``; returns its wall time in seconds."""
    cmd = [sys.executable, "-m", "pardiff", *map(str, args)]
    if ranks is not None:
        mpiexec = shutil.which("mpiexec") or str(Path(sys.executable).parent / "mpiexec")
        cmd = [mpiexec, "-n", str(ranks), *cmd]
    t0 = time.time()
    result = run_child(cmd, cwd=cwd)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{result.stderr}")
    return time.time() - t0


def shipped_or_file(value: str) -> str:
    """A --profile or --network value for commands that run in a work folder: a shipped name as it is,
    a file (or a name ending in .json) as its absolute path, so it means what it meant where it was given."""
    return str(Path(value).resolve()) if value.endswith(".json") or Path(value).is_file() else value


def simulate(*args, cwd) -> dict:
    """``pardiff simulate args...`` in ``cwd``: its --report."""
    fd, report = tempfile.mkstemp(suffix=".json", dir=cwd)
    os.close(fd)
    try:
        pardiff(None, "simulate", *args, "--report", report, cwd=cwd)
        return json.loads(Path(report).read_text())
    finally:
        os.unlink(report)
