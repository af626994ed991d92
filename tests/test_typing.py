"""The typed API, checked by mypy --strict: what must pass, and what must be an error."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GOOD = Path("tests/typing/check_api.py")
BAD = Path("tests/typing/check_api_bad.py")
ERROR = re.compile(r"^(?P<path>[^:]+):(?P<line>\d+): error: (?P<message>.*)$")

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("mypy") is None, reason="mypy is not installed"
)


@pytest.fixture(scope="module")
def mypy_errors(tmp_path_factory: pytest.TempPathFactory) -> dict[Path, list[str]]:
    """Run mypy once over both files; return each file's errors as `line: message`."""
    cache = tmp_path_factory.mktemp("mypy-cache")
    process = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-pretty",
            "--show-error-codes",
            "--hide-error-context",
            "--no-color-output",
            f"--cache-dir={cache}",
            str(GOOD),
            str(BAD),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert process.returncode in (0, 1), process.stdout + process.stderr
    errors: dict[Path, list[str]] = {GOOD: [], BAD: []}
    for line in process.stdout.splitlines():
        if match := ERROR.match(line):
            path = Path(match["path"])
            errors.setdefault(path, []).append(f"{match['line']}: {match['message']}")
    return errors


def marked_lines(path: Path) -> set[int]:
    lines = (ROOT / path).read_text().splitlines()
    return {number for number, text in enumerate(lines, 1) if text.endswith("# error")}


def test_the_api_type_checks(mypy_errors: dict[Path, list[str]]) -> None:
    assert mypy_errors[GOOD] == []
    assert set(mypy_errors) == {GOOD, BAD}  # nothing in aqueue itself, or anywhere else


def test_misuse_is_rejected_on_exactly_the_marked_lines(
    mypy_errors: dict[Path, list[str]],
) -> None:
    expected = marked_lines(BAD)
    assert len(expected) >= 15
    reported = {int(error.split(":", 1)[0]) for error in mypy_errors[BAD]}
    assert sorted(reported - expected) == [], mypy_errors[BAD]  # errors on unmarked lines
    assert sorted(expected - reported) == [], mypy_errors[BAD]  # marked lines mypy accepted


def test_delay_checks_argument_types(mypy_errors: dict[Path, list[str]]) -> None:
    line = next(
        number
        for number, text in enumerate((ROOT / BAD).read_text().splitlines(), 1)
        if 'add.delay("a", b=2)' in text
    )
    assert sorted(e for e in mypy_errors[BAD] if e.startswith(f"{line}: ")) == [
        f'{line}: Argument 1 to "delay" of "Task" has incompatible type "str"; '
        'expected "int"  [arg-type]',
        f'{line}: Unexpected keyword argument "b" for "delay" of "Task"  [call-arg]',
    ]
