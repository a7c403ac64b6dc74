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


@pytest.mark.parametrize("n,args", [
    (2, ["se2p", "--batch", 5]),
    (3, ["paradigms", "--sampler", "ddim", "--steps", 12, "--window", 4, "--batch", 2]),
    (1, ["sequential", "--model", "digits-32-cfg", "--sampler", "ddim", "--steps", 3, "--class-label", 3,
         "--guidance", 2, "--batch", 3]),
], ids=["se2p", "paradigms", "guidance"])
def test_eval_batch_evaluates_in_pieces_to_the_same_samples(tmp_path, n, args):
    """--eval-batch 2: every evaluation reaches the network two rows at a time (guidance's doubled batch
    and a window's rows too); the samples and the algorithm's evaluations (one trace row each) are the run's
    without it."""
    pardiff(n, "run", *args, "--out", "whole.npy", "--trace", "whole.h5", cwd=tmp_path)
    pardiff(n, "run", *args, "--eval-batch", 2, "--out", "pieces.npy", "--trace", "pieces.h5", cwd=tmp_path)
    whole, pieces = np.load(tmp_path / "whole.npy"), np.load(tmp_path / "pieces.npy")
    # the analytic model is row by row; a network's convolutions may round differently at another batch size
    np.testing.assert_allclose(pieces, whole, rtol=0, atol=0 if "--model" not in args else 1e-4)
    rows = {name: {r: (e["label"] == "eps").sum() for r, e in load_trace(str(tmp_path / f"{name}.h5")).events.items()}
            for name in ("whole", "pieces")}
    assert rows["whole"] == rows["pieces"]


BAD = [
    (2, ["se2p", "--gamma", 0], "--gamma"),
    (2, ["se2p", "--gamma", 1.5], "--gamma"),
    (2, ["se2p", "--rho", 0], "--rho"),
    (2, ["se2p", "--rho", -1], "--rho"),
    (2, ["se2p", "--rho", "inf"], "--rho"),
    (2, ["se2p", "--sampler", "ddim"], "--sampler"),
    (2, ["se2p", "--sampler", "iia-ddim"], "--sampler"),
    (2, ["se2p", "--steps", 0], "--steps"),
    (1, ["sequential", "--eval-batch", -1], "--eval-batch"),
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
    (2, ["se2p", "--trace", "t.txt"], "--trace"),
    (2, ["se2p", "--out", "o.npy", "--trace", "o.npy"], "--trace"),
    (2, ["fit-iia", "--out", "c.h5", "--trace", "c.h5"], "--trace"),
    (2, ["se2p", "--window", 4], "--window"),                # a flag of another algorithm, not ignored
    (2, ["paradigms", "--subintervals", 5], "--subintervals"),
    (1, ["sequential", "--gamma", 0.1], "--gamma"),
    (2, ["parasolver", "--exchange", "swap"], "--exchange"),
    (2, ["se2p", "--device", "tpu"], "--device"),
    (1, ["sequential", "--tf32", "maybe"], "--tf32"),
    (1, ["sequential", "--tf32", "off", "--dtype", "float16"], "--tf32"),
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


# the other commands: (ranks or None, command, the flag the one message must name)
OTHER_BAD = [
    (None, ["simulate", "--replay", "t.h5", "--trace", "t.h5"], "--trace"),
    (None, ["simulate", "--replay", "t.h5", "--report", "/no/such/dir/r.json"], "--report"),
    (None, ["simulate", "--replay", "t.h5", "--report", "r.txt"], "--report"),
    (None, ["simulate", "--replay", "t.h5", "--gamma", 7], "--gamma"),
    (None, ["simulate", "--replay", "t.h5", "--ranks", 5], "--ranks"),
    (None, ["simulate", "--replay", "t.h5", "--network", "recorded", "--ranks-per-node", 0], "--ranks-per-node"),
    (None, ["simulate", "se2p", "--ranks", 1], "--ranks"),
    (2, ["run", "fit-iia", "--out", "c.h5"], "ALGO"),         # its flags belong to `pardiff fit-iia`
    (None, ["simulate", "fit-iia", "--ranks", 2, "--out", "c.h5"], "ALGO"),
    (None, ["simulate", "paradigms", "--ranks", 2, "--precondition", 3], "--precondition"),
    (2, ["bench", "tracing", "sequential", "--tol", 0.1, "--results", "r.json"], "--tol"),
    (None, ["bench", "model", "--device", "gpu", "--out", "m.json"], "--device"),
    (None, ["bench", "model", "--out", "/no/such/dir/m.json"], "--out"),
    (None, ["bench", "model", "--out", "m.txt"], "--out"),
    (2, ["bench", "comm", "--sizes", "8,64", "--out", "/no/such/dir/c.json"], "--out"),
    (2, ["bench", "comm", "--sizes", "0"], "--sizes"),
    (2, ["bench", "comm", "--staging", "carrier-pigeon"], "--staging"),
    (2, ["bench", "comm", "--staging", "shared"], "--staging"),                 # CPU tensors: nothing to stage
    (2, ["bench", "comm", "--staging-lane-mb", 32], "--staging-lane-mb"),      # without --staging shared
    (2, ["bench", "tracing", "se2p", "--steps", 2, "--results", "/no/such/dir/r.json"], "--results"),
    (None, ["trace", "plot", "t.h5", "-o", "/no/such/dir/p.png"], "-o"),
    (None, ["trace", "plot", "t.h5", "-o", "p.txt"], "-o"),
    (None, ["trace", "export", "t.h5", "-o", "t.h5"], "-o"),
    (None, ["trace", "summary", "not-hdf5.h5"], "not an HDF5 file"),
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A trace to point the commands at, and a file that is not HDF5."""
    d = tmp_path_factory.mktemp("inputs")
    pardiff(2, "run", "se2p", "--steps", 3, "--trace", "t.h5", cwd=d)
    (d / "not-hdf5.h5").write_text("a text file")
    return d


@pytest.mark.parametrize("n,args,says", OTHER_BAD, ids=[" ".join(map(str, a)) for _, a, _ in OTHER_BAD])
def test_other_commands_refuse_bad_input_before_any_work(tmp_path, inputs, n, args, says):
    import shutil
    for f in inputs.iterdir():
        shutil.copy(f, tmp_path)
    before = {f.name: f.stat().st_mtime_ns for f in tmp_path.iterdir()}
    result = pardiff(n, *args, cwd=tmp_path, check=False, timeout=60)
    assert result.returncode == 2, result.stderr
    errors = [l for l in result.stderr.splitlines() if "error" in l]
    assert len(errors) == 1 and says in errors[0], result.stderr          # once, not once per rank
    assert "Traceback" not in result.stderr and not result.stdout.strip(), "no work before the message"
    assert {f.name: f.stat().st_mtime_ns for f in tmp_path.iterdir()} == before, "no file written or changed"


def test_a_sample_that_overflowed_fails_the_job(tmp_path):
    result = pardiff(2, "run", "se2p", "--steps", 3, "--rho", "1e300", "--out", "s.npy", cwd=tmp_path,
                     check=False, timeout=60)
    assert result.returncode != 0 and result.stderr.count("NaN or inf") == 1, result.stderr
    assert np.isnan(np.load(tmp_path / "s.npy")).all()          # written all the same, to look at


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
