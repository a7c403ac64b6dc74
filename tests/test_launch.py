"""The launch/ scripts' shared pieces, run for real: the runner every study uses, the quality scripts'
record of how their samples were made, and sim_compare."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import BIN, TEST_ENV, pardiff

LAUNCH = Path(__file__).resolve().parent.parent / "launch"


def processes_with(marker: str) -> list[int]:
    """The pids whose command line holds ``marker`` as one argument."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "cmdline").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:             # gone meanwhile
            pass
    return found


def test_a_script_stopped_by_sigterm_stops_its_ranks(tmp_path):
    """`timeout` stops a study running two settings at once (threads, each waiting on an mpiexec job):
    the jobs stop with it, instead of running on beside whatever comes next."""
    marker = str(900000 + os.getpid() % 99999)          # a --seed no other process of this machine has
    cmd = [sys.executable, str(LAUNCH / "quality_sweeps.py"), "--out-dir", "q", "--model", "digits-32-cfg",
           "--reference", "digits", "--groups", "n100", "--batch", 32, "--jobs", 2, "--seed", marker, "--sample-only"]
    env = dict(TEST_ENV, PATH=f"{BIN}{os.pathsep}{TEST_ENV['PATH']}")
    script = subprocess.Popen(list(map(str, cmd)), cwd=tmp_path, env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 90
        while len(processes_with(marker)) < 5:            # two mpiexec jobs: the baseline's rank, SE2P's two
            assert script.poll() is None, script.stderr.read()
            assert time.time() < deadline, f"the ranks never started: {processes_with(marker)}"
            time.sleep(0.2)
        time.sleep(2)                                    # at work (100 steps of 32 samples take far longer)
        script.terminate()
        assert script.wait(timeout=60) == 128 + signal.SIGTERM
        deadline = time.time() + 30
        while processes_with(marker) and time.time() < deadline:
            time.sleep(0.2)
        assert processes_with(marker) == []
        assert not list((tmp_path / "q" / "samples").glob("*.npy"))     # no setting finished
    finally:
        for pid in processes_with(marker):               # a failure above must not leave ranks behind
            os.kill(pid, signal.SIGKILL)
        if script.poll() is None:
            os.killpg(script.pid, signal.SIGKILL)


def test_sim_compare_replays_and_executes_recorded_traces(tmp_path):
    """launch/sim_compare.py on a CPU trace of each algorithm: the replay with the recorded costs gives
    back the recorded wall time exactly, and every trace is executed again with its own flags."""
    pardiff(2, "run", "se2p", "--steps", 6, "--batch", 2, "--trace", "se2p.h5", cwd=tmp_path)
    pardiff(2, "run", "parasolver", "--sampler", "ddim", "--steps", 12, "--subintervals", 4, "--window", 3,
            "--batch", 2, "--trace", "ps.h5", cwd=tmp_path)
    pardiff(None, "bench", "model", "--model", "gmm", "--batch", "1,2,4,6", "--repeats", 3, "--out", "prof.json",
            cwd=tmp_path)
    result = subprocess.run([sys.executable, str(LAUNCH / "sim_compare.py"), "se2p.h5", "ps.h5", "--profile", "prof.json",
                             "--network", "nvlink", "--execute", "se2p", "ps", "--out", "cmp"],
                            cwd=tmp_path, env=TEST_ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = json.loads((tmp_path / "cmp" / "validation.json").read_text())["rows"]
    assert [r["algorithm"] for r in rows] == ["se2p", "parasolver"]
    for r in rows:
        assert r["replay_recorded_error"] == 0.0 and r["execute_s"] > 0 and "replay_model_s" in r
    assert "--gamma" in rows[0]["execute_flags"] and "--window" not in rows[0]["execute_flags"]
    assert "--window 3" in rows[1]["execute_flags"] and "--gamma" not in rows[1]["execute_flags"]


def test_a_samples_folder_keeps_its_flags_and_refuses_others(tmp_path):
    """Both quality scripts record how a folder's samples were made (samples/sampled.json, one entry per
    sampling call) and refuse to add to it, or evaluate it, with another --model/--batch/…: mixing
    sets of different sizes or models would be paired sample by sample without a word."""
    samples = tmp_path / "q" / "samples"
    samples.mkdir(parents=True)
    (samples / "sampled.json").write_text(json.dumps({"model": "lfw-32", "batch": 16, "ranks": 2, "calls": []}))
    for script, args in (("parallel_quality.py", ["--batch", "8", "--sample-only"]),
                         ("quality_sweeps.py", ["--batch", "16", "--model", "digits-32-cfg", "--no-run"])):
        result = subprocess.run([sys.executable, str(LAUNCH / script), "--out-dir", str(tmp_path / "q"), *args],
                                env=TEST_ENV, capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, (script, result.stderr)
        said = "--batch 16" if script == "parallel_quality.py" else "--model lfw-32"
        assert said in result.stderr and "another --out-dir" in result.stderr, result.stderr
    assert not [p for p in samples.iterdir() if p.suffix == ".npy"]          # nothing ran

    sys.path.insert(0, str(LAUNCH))
    from quality_study import log_sampling_call, sampling_log
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    flags = {"model": "gmm", "batch": 4, "seed": 1}
    for call in ("first", "second"):
        log = sampling_log(fresh, flags, pytest.fail)
        log_sampling_call(fresh, log, flags, settings=[call])
    record = json.loads((fresh / "sampled.json").read_text())
    assert record["batch"] == 4 and [c["settings"] for c in record["calls"]] == [["first"], ["second"]]
    assert all(c["device"] and c["torch"] and c["date"] for c in record["calls"])


def test_quality_sweeps_tables_and_grids(tmp_path):
    """quality_sweeps' tables: a committed sweep's table.md comes back from its results.json unchanged
    (digits: no colourfulness, no NIQE), and a colour reference adds the colourfulness and NIQE-photos
    columns; grid_png writes gray rows as gray and RGB rows as RGB."""
    import numpy as np
    from PIL import Image
    sys.path.insert(0, str(LAUNCH))
    from quality_study import grid_png
    from quality_sweeps import format_tables
    folder = LAUNCH.parent / "traces" / "results" / "2026-11-25_h100_quality_5120" / "digits_cfg_table4"
    results = json.loads((folder / "results.json").read_text())
    meta = results["meta"]
    args = (meta["groups"], results["metrics"], results["paired_vs_baseline"], meta["batch"])
    assert format_tables(*args, meta["reference"]) == (folder / "table.md").read_text()

    # the same numbers dressed as a colour sweep (the columns, not the values, are under test)
    metrics = json.loads(json.dumps(results["metrics"]))
    diffs = json.loads(json.dumps(results["paired_vs_baseline"]))
    niqe = {"mean": 7.0, "se": 0.1, "set": 3.0, "set_subset_std": 0.2}
    for m in metrics.values():
        m.update(colourfulness={"mean": 21.5, "se": 0.25, "std": 1.0}, niqe_photos=niqe)
    for d in diffs.values():
        d.update(colourfulness={"mean": -1.25, "se": 0.5}, niqe_photos={"mean": 0.5, "se": 0.25})
    table = format_tables(meta["groups"], metrics, diffs, meta["batch"], "photos")
    assert "| colourfulness |" in table and "NIQE-photos per image" in table and "photo share" in table
    assert "| 21.5000 ± 0.2500 |" in table and "| -1.2500 ± 0.5000 |" in table and "| +0.50 ± 0.25 |" in table
    rows = [line for line in table.splitlines() if line.startswith("|")]
    width = None                                   # every row of a table has its header's cells
    for line in rows:
        if line.startswith("| setting"):
            width = line.count("|")
        assert line.count("|") == width, line

    gray = np.linspace(-1, 1, 2 * 4 * 4, dtype=np.float32).reshape(2, 1, 4, 4)
    rgb = np.stack([np.full((4, 4), v, np.float32) for v in (1, -1, 0)])[None].repeat(2, 0)
    grid_png(tmp_path / "g.png", [gray], 2, scale=1)
    grid_png(tmp_path / "c.png", [rgb, rgb], 2, scale=1)
    g, c = Image.open(tmp_path / "g.png"), Image.open(tmp_path / "c.png")
    assert g.mode == "L" and g.size == (8, 4) and np.asarray(g)[0, 0] == 0 and np.asarray(g)[3, 7] == 255
    assert c.mode == "RGB" and c.size == (8, 8) and tuple(np.asarray(c)[5, 6]) == (255, 0, 128)


def test_quality_sweeps_evaluates_a_folder_and_pairs_each_image_with_its_baseline(tmp_path):
    """quality_sweeps --no-run on two hand-made sets, the second the first lightened by 0.1: one pardiff
    eval gives the per-image values the paired differences are made of (brightness +0.05 on the [0, 1]
    scale, the RMS distance 0.1, the classes the eval's net gave, NIQE-LFW per image)."""
    import numpy as np
    pytest.importorskip("skimage")
    from pardiff.data import load_dataset
    samples = tmp_path / "q" / "samples"
    samples.mkdir(parents=True)
    (samples / "sampled.json").write_text(json.dumps({"model": "lfw-32", "batch": 8, "seed": 1, "calls": []}))
    data, _ = load_dataset("lfw", 32)
    base = (data[::25] * 0.8).numpy()                   # inside [-0.8, 0.8]: lightening clips nothing
    np.save(samples / "ddpm-10-B.npy", base)
    np.save(samples / "ddpm-10-1.35.npy", base + 0.1)
    result = subprocess.run([sys.executable, str(LAUNCH / "quality_sweeps.py"), "--out-dir", str(tmp_path / "q"),
                             "--groups", "table4", "--batch", "8", "--no-run"],
                            env=TEST_ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    results = json.loads((tmp_path / "q" / "results.json").read_text())
    d = results["paired_vs_baseline"]["ddpm-10-1.35"]
    assert d["brightness"]["mean"] == pytest.approx(0.05, abs=1e-6) and d["brightness"]["se"] < 1e-6
    assert d["contrast"]["mean"] == pytest.approx(0, abs=1e-6)
    assert d["rms_to_baseline"]["median"] == pytest.approx(0.1, abs=1e-6)
    m = results["metrics"]
    assert 0 <= d["class_changed"] <= 8 and sorted(m) == ["data", "ddpm-10-1.35", "ddpm-10-B"]
    assert d["niqe_lfw"]["mean"] == pytest.approx(m["ddpm-10-1.35"]["niqe_lfw"]["mean"]
                                                  - m["ddpm-10-B"]["niqe_lfw"]["mean"], abs=1e-9)
    assert d["class_changed"] >= abs(m["ddpm-10-1.35"]["face_rate"] - m["ddpm-10-B"]["face_rate"]) * 8 - 1e-9
    assert results["meta"]["feature_net"]["held_out_accuracy"] > 0.8
    assert (tmp_path / "q" / "quality_sweeps_table4.png").exists()
