"""The distribution name: "aqueue" on PyPI is another project, so we ship as aqueue-tasks."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: `pip install aqueue`, `pip install "aqueue[redis]"`: any install of the wrong name.
WRONG = re.compile(r"""pip install\s+(?:-\S+\s+)*["']?aqueue(?![-\w])""")


def texts() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "pyproject.toml"]
    for folder in ("aqueue", "examples", "benchmarks", "tests", "scripts"):
        files += [p for p in (ROOT / folder).rglob("*") if p.suffix in {".py", ".md", ""}]
    return [p for p in files if p.is_file()]


def test_the_distribution_is_aqueue_tasks() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == "aqueue-tasks"


def test_no_install_line_names_the_unrelated_pypi_project() -> None:
    bad = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in texts()
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if WRONG.search(line) and path.name != "test_distribution.py"
    ]
    assert not bad, "install aqueue-tasks, not aqueue:\n" + "\n".join(bad)


def test_the_pattern_catches_the_wrong_name() -> None:
    assert WRONG.search('pip install "aqueue[redis]"')
    assert WRONG.search("pip install aqueue")
    assert not WRONG.search('pip install "aqueue-tasks[redis]"')
    assert not WRONG.search("pip install -e .")
