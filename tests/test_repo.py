"""The repository keeps its promises to a new user."""
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_exactly_the_readme_test_command():
    ci = [l for l in (ROOT / ".ci" / "run").read_text().splitlines() if l.startswith("python3 -m venv")]
    readme = (ROOT / "README.md").read_text().splitlines()
    assert len(ci) == 1 and ci[0] in readme
    assert ci[0].endswith("python -m pytest")


def test_every_benchmark_case_is_a_valid_run():
    """launch/bench_parallel.py's cases (the GPU benchmarks and the simulator's studies) pass the
    same validation as `pardiff run`, so a typo fails here and not on a lent GPU."""
    import sys

    from pardiff.config import RunConfig
    sys.path.insert(0, str(ROOT / "launch"))
    try:
        import bench_parallel
    finally:
        sys.path.pop(0)
    assert set(bench_parallel.WINDOW_CASES + bench_parallel.SUBINTERVAL_CASES) <= set(bench_parallel.CASES)
    checked = 0
    for name, case in bench_parallel.CASES.items():
        for algorithm in ("parasolver", "paradigms", "se2p"):
            if algorithm in case:
                for ranks in (1, 2):
                    if algorithm == "se2p" and ranks == 1:
                        continue
                    RunConfig(algorithm=algorithm, sampler=case["sampler"], steps=case["steps"],
                              **case[algorithm]).validate(ranks)
                    checked += 1
    assert checked > 2 * len(bench_parallel.WINDOW_CASES)


def test_every_image_the_docs_show_is_in_the_repository():
    """A picture written up in docs/ or the README and never committed fails here."""
    import re
    missing = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for target in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", page.read_text()):
            if not target.startswith("http") and not (page.parent / target).is_file():
                missing.append(f"{page.relative_to(ROOT)}: {target}")
    assert not missing, missing
