"""The command line as users type it: the issue's command lines, validation at the edge, aborts."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import BIN, TEST_ENV, mpiexec, pardiff, run_cmd
from pardiff.trace.reader import load_trace

HERE = os.path.dirname(__file__)


def shell(command, cwd, timeout=180):
    env = dict(TEST_ENV, PATH=f"{BIN}{os.pathsep}{TEST_ENV['PATH']}")
    result = run_cmd(["bash", "-c", command], cwd, timeout, env)
    assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_issue_command_lines_as_written(tmp_path):
    shell("mpiexec -n 1 pardiff run sequential --sampler ddpm --model gmm --steps 10 --seed 3 --batch 2 "
          "--out base.npy", tmp_path)
    shell("mpiexec -n 2 pardiff run se2p --model gmm --steps 10 --gamma 0.015 --rho 1.35 --seed 3 --batch 2 "
          "--out se2p.npy --trace se2p.h5", tmp_path)
    shell("mpiexec -n 3 pardiff run se2p --integration naive --model gmm --steps 20 --out abl.npy", tmp_path)
    summary = shell("pardiff trace summary se2p.h5", tmp_path)
    assert np.load(tmp_path / "base.npy").shape == np.load(tmp_path / "se2p.npy").shape == (2, 3, 32, 32)
    assert np.load(tmp_path / "abl.npy").shape == (1, 3, 32, 32)
    assert "se2p" in summary and "x_pred" in summary and "critical path" in summary
    shell("pardiff trace plot se2p.h5 -o timeline.png", tmp_path)
    shell("pardiff trace export se2p.h5 --format chrome -o se2p.json", tmp_path)
    assert (tmp_path / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    chrome = json.loads((tmp_path / "se2p.json").read_text())
    assert sum(e["ph"] == "X" for e in chrome["traceEvents"]) == sum(len(v) for v in load_trace(
        str(tmp_path / "se2p.h5")).events.values())
    assert not (tmp_path / "se2p.h5.parts").exists()


def test_png_output_and_report(tmp_path):
    pardiff(2, "run", "se2p", "--steps", 5, "--batch", 3, "--out", "s.png", "--report", "r.json", cwd=tmp_path)
    from PIL import Image
    assert Image.open(tmp_path / "s.png").size == (64, 64)      # 3 images of 32x32 in a 2x2 grid
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["algorithm"] == "se2p" and report["world_size"] == 2
    assert report["nfe"] == 10 and report["wall_s"] > 0
    assert [r["nfe"] for r in report["per_rank"]] == [5, 5]


BAD = [
    (2, ["se2p", "--gamma", 0], "--gamma"),
    (2, ["se2p", "--gamma", 1.5], "--gamma"),
    (2, ["se2p", "--rho", 0], "--rho"),
    (2, ["se2p", "--rho", -1], "--rho"),
    (2, ["se2p", "--sampler", "ddim"], "--sampler"),
    (2, ["se2p", "--sampler", "iia-ddim"], "--sampler"),
    (2, ["se2p", "--steps", 0], "--steps"),
    (2, ["se2p", "--steps", 1000], "--steps"),
    (2, ["se2p", "--batch", 0], "--batch"),
    (2, ["se2p", "--seed", -1], "--seed"),
    (2, ["se2p", "--integration", "average"], "--integration"),
    (2, ["se2p", "--model", "nonsense"], "--model"),
    (2, ["se2p", "--model", "arch:unet9000"], "--model"),
    (2, ["se2p", "--model", "./no/such/folder"], "--model"),
    (2, ["se2p", "--class-label", 8], "--class-label"),
    (2, ["se2p", "--out", "x.txt"], "--out"),
    (2, ["se2p", "--out", "/no/such/dir/x.npy"], "--out"),
    (2, ["se2p", "--trace", "/no/such/dir/t.h5"], "--trace"),
    (2, ["se2p", "--report", "r.txt"], "--report"),
    (2, ["se2p", "--device", "tpu"], "--device"),
    (1, ["se2p"], "ranks"),
    (2, ["sequential"], "ranks"),
    (2, ["sequential", "--sampler", "euler"], "--sampler"),
    (2, ["se2p", "--gamma", "abc"], "--gamma"),
    (2, ["paradigm"], "ALGO"),
    (1, ["sequential", "--sampler", "iia-ddim"], "--coeffs"),
    (1, ["sequential", "--sampler", "iia-ddim", "--coeffs", "none.h5"], "--coeffs"),
    (1, ["sequential", "--sampler", "ddim", "--coeffs", "none.h5"], "--coeffs"),
    (1, ["sequential", "--sampler", "ddim", "--guidance", 2], "--guidance"),
    (1, ["sequential", "--sampler", "ddim", "--guidance", "nan", "--class-label", 1], "--guidance"),
    (1, ["sequential", "--model", "arch:ddpm-church-256", "--guidance", 2, "--class-label", 1], "--guidance"),
    (2, ["parasolver", "--sampler", "edm"], "--sampler"),
    (2, ["fit-iia"], "--out"),
    (2, ["fit-iia", "--out", "c.npy"], "--out"),
    (2, ["fit-iia", "--solver", "heun", "--out", "c.h5"], "--solver"),
    (2, ["fit-iia", "--fine", 1, "--out", "c.h5"], "--fine"),
    (3, ["fit-iia", "--batch", 2, "--out", "c.h5"], "--batch"),
    (2, ["fit-iia", "--quantities", 3, "--out", "c.h5"], "--quantities"),
    (2, ["fit-iia", "--solver", "biia-edm", "--history", -1, "--out", "c.h5"], "--history"),
    (2, ["fit-iia", "--solver", "iia-edm", "--steps", 2, "--out", "c.h5"], "--steps"),
    (2, ["fit-iia", "--solver", "ddim-cfg", "--out", "c.h5"], "--guidance"),
    (2, ["fit-iia", "--solver", "ddim-cfg", "--guidance", 2, "--model", "arch:ddpm-church-256",
         "--out", "c.h5"], "--guidance"),
]


@pytest.mark.parametrize("n,args,flag", BAD, ids=[" ".join(map(str, a)) for _, a, _ in BAD])
def test_bad_input_is_one_clear_message_before_any_work(tmp_path, n, args, flag):
    if "--trace" not in args:
        args = [*args, "--trace", "t.h5"]          # so that any work would leave a file behind
    command = args if args[0] == "fit-iia" else ["run", *args]
    result = pardiff(n, *command, cwd=tmp_path, check=False, timeout=60)
    assert result.returncode == 2, result.stderr
    errors = [l for l in result.stderr.splitlines() if "error" in l]
    assert len(errors) == 1 and flag in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not any(tmp_path.iterdir()), "no rank may start work (no trace, no output)"


def test_cuda_without_gpu_is_refused(tmp_path):
    result = pardiff(None, "run", "sequential", "--device", "cuda", cwd=tmp_path, check=False)
    assert result.returncode == 2 and "--device" in result.stderr


def test_launcher_mismatch_fails_loudly(tmp_path):
    env = dict(TEST_ENV, OMPI_COMM_WORLD_SIZE="4")   # an Open MPI launcher said 4; MPICH's mpi4py sees 1
    result = pardiff(None, "run", "sequential", cwd=tmp_path, env=env, check=False, timeout=60)
    assert result.returncode == 3
    assert "different MPI" in result.stderr and "OMPI_COMM_WORLD_SIZE=4" in result.stderr


def test_failing_rank_aborts_the_job_and_keeps_its_trace(tmp_path):
    cmd = [mpiexec(), "-n", "2", sys.executable, os.path.join(HERE, "progs", "fail_on_rank.py"), "t.h5"]
    result = run_cmd(cmd, tmp_path, timeout=60)        # a hang fails the test (run_cmd kills the group)
    assert result.returncode != 0
    assert "rank 1 of 2 failed" in result.stderr and "injected failure on rank 1" in result.stderr
    assert (tmp_path / "t.h5.parts").is_dir() and not (tmp_path / "t.h5").exists()
    partial = load_trace(str(tmp_path / "t.h5"))          # read straight from the parts
    assert partial.events[1]["label"].tolist() == ["latent", "x_pred"]
    pardiff(None, "trace", "merge", "t.h5", cwd=tmp_path)
    merged = load_trace(str(tmp_path / "t.h5"))
    assert merged.events[1]["line"].tolist() == ["FAIL:1", "FAIL:2"]
    again = pardiff(None, "trace", "merge", "t.h5", cwd=tmp_path, check=False)
    assert again.returncode == 2 and "already merged" in again.stderr and "Traceback" not in again.stderr
    # rank 0 was killed while waiting: its flushed rows survive, the buffered tail is lost
    from pardiff.trace.writer import FLUSH_ROWS
    assert merged.events[0]["line"].tolist() == ["FAIL:0"] * FLUSH_ROWS
    assert "x_pred" in pardiff(None, "trace", "summary", "t.h5", cwd=tmp_path).stdout


def test_trace_tool_errors(tmp_path):
    result = pardiff(None, "trace", "summary", "missing.h5", cwd=tmp_path, check=False)
    assert result.returncode == 2 and "missing.h5" in result.stderr and "Traceback" not in result.stderr
    (tmp_path / "empty.h5.parts").mkdir()          # a run that died before any rank wrote
    for name, says in (("missing.h5", "no rank parts to merge"), ("empty.h5", "no rank part files")):
        result = pardiff(None, "trace", "merge", name, cwd=tmp_path, check=False)
        assert result.returncode == 2 and says in result.stderr and "Traceback" not in result.stderr


def test_models_lists_names():
    out = subprocess.run([sys.executable, "-m", "pardiff", "models"], capture_output=True, text=True).stdout
    assert out.split("\n")[0] == "gmm" and "arch:ddpm-church-256" in out.split()
