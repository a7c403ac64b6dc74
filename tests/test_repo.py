"""The repository keeps its promises to a new user."""
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_exactly_the_readme_test_command():
    ci = [l for l in (ROOT / ".ci" / "run").read_text().splitlines() if l.startswith("python3 -m venv")]
    readme = (ROOT / "README.md").read_text().splitlines()
    assert len(ci) == 1 and ci[0] in readme
    assert ci[0].endswith("python -m pytest")
