"""Shared test helpers: launching real MPI jobs of the pardiff CLI."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
# mpi-pytest relaunches parallel tests with the `mpiexec` on PATH: make it the one beside this Python.
os.environ["PATH"] = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
TEST_ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
for _var in ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS"):
    TEST_ENV.pop(_var, None)


def mpiexec() -> str:
    """The mpiexec beside this Python (the mpich wheel's), else the one on PATH; never skipped."""
    candidate = BIN / "mpiexec"
    found = str(candidate) if candidate.exists() else shutil.which("mpiexec")
    if not found:
        raise RuntimeError("no mpiexec found: install the test extras (pip install -e '.[mpich,test]')")
    return found


def run_cmd(cmd, cwd, timeout=180, env=None) -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own session; on timeout kill the whole process group and fail (no hung ranks)."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=env or TEST_ENV)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(map(str, cmd))} hung for {timeout}s\nstdout:\n{out}\nstderr:\n{err}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def pardiff(n: int | None, *args, cwd, timeout=180, env=None, check=True) -> subprocess.CompletedProcess:
    """``mpiexec -n n python -m pardiff args...`` (``n=None``: no launcher at all)."""
    cmd = [sys.executable, "-m", "pardiff", *map(str, args)]
    if n is not None:
        cmd = [mpiexec(), "-n", str(n), *cmd]
    result = run_cmd(cmd, cwd, timeout, env)
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {result.returncode}\nstdout:\n{result.stdout}\n"
                    f"stderr:\n{result.stderr}")
    return result


def pytest_collection_modifyitems(config, items):
    """mpi-pytest reruns parallel tests under mpiexec: give the children a shorter timeout than
    the parent, so a hung rank fails inside the MPI job and is reported, instead of the parent
    killing mpiexec and orphaning ranks."""
    child = "_PYTEST_MPI_CHILD_PROCESS" in os.environ
    for item in items:
        if item.get_closest_marker("parallel") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(60 if child else 120))
