"""Typing as a contract: mypy --strict accepts real usage and rejects misuse."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mypy import api as mypy_api

HERE = Path(__file__).parent
USAGE = HERE / "typecheck_usage.py"

#: Each line marked ``# E: <code>`` must draw exactly that mypy error, and no other line any.
MISUSE = """\
from monica_async import MonicaClient, RetryPolicy, UpscaleResult


async def misuse(client: MonicaClient, result: UpscaleResult) -> None:
    await client.upscale(42)  # E: arg-type
    await client.upscale("https://x.test/a.png", scale="2")  # E: arg-type
    await client.upscale("https://x.test/a.png", timeout="5")  # E: arg-type
    await client.download(result, 42)  # E: call-overload
    result.url = "https://elsewhere.test/b.png"  # E: misc
    RetryPolicy(3)  # E: call-arg
    RetryPolicy(max_attempts="3")  # E: arg-type
    print(client.upscale("https://x.test/a.png").url)  # E: attr-defined
    MonicaClient(timeout="30")  # E: arg-type
    MonicaClient(retry=3)  # E: arg-type
    client.closed = True  # E: misc
    RetryPolicy(retry_statuses=["429"])  # E: list-item
    RetryPolicy(retry_statuses="429")  # E: arg-type
"""

_ERROR = re.compile(r"^(?P<path>[^:]+):(?P<line>\d+): error: .*\[(?P<code>[a-z-]+)\]$")


@pytest.fixture(scope="module")
def mypy_errors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[tuple[int, str]]]:
    """Run mypy --strict once over the usage file and the misuse file; errors by file name."""
    folder = tmp_path_factory.mktemp("typing")
    misuse = folder / "misuse.py"
    misuse.write_text(MISUSE, "utf-8")
    stdout, stderr, _ = mypy_api.run(
        [
            "--strict",
            "--no-error-summary",
            "--show-error-codes",
            "--cache-dir",
            str(folder / "cache"),
            str(USAGE),
            str(misuse),
        ]
    )
    assert "" == stderr
    errors: dict[str, set[tuple[int, str]]] = {}
    for line in stdout.splitlines():
        if ": note: " in line:
            continue
        match = _ERROR.match(line)
        assert match, f"unexpected mypy output: {line}"
        errors.setdefault(Path(match["path"]).name, set()).add((int(match["line"]), match["code"]))
    return errors


@pytest.mark.slow
def test_typed_usage_passes_mypy_strict(mypy_errors: dict[str, set[tuple[int, str]]]) -> None:
    """The public API, used as a user would, type-checks under --strict with no ignore."""
    assert set() == mypy_errors.get(USAGE.name, set())


@pytest.mark.slow
def test_misuse_is_rejected_by_mypy(mypy_errors: dict[str, set[tuple[int, str]]]) -> None:
    """Wrong argument types, mutation of results and a forgotten await are type errors."""
    expected = {
        (number, line.split("# E: ")[1])
        for number, line in enumerate(MISUSE.splitlines(), start=1)
        if "# E: " in line
    }
    assert expected == mypy_errors.get("misuse.py", set())


@pytest.mark.slow
def test_typed_usage_passes_pyright_strict(tmp_path: Path) -> None:
    """The same usage file type-checks under pyright in strict mode."""
    config = tmp_path / "pyrightconfig.json"
    config.write_text(json.dumps({"typeCheckingMode": "strict", "pythonVersion": "3.11"}))
    done = subprocess.run(
        [
            *(sys.executable, "-m", "pyright", "--outputjson"),
            *("--pythonpath", sys.executable, "--project", str(config), str(USAGE)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    report = json.loads(done.stdout)
    problems = [
        f"line {d['range']['start']['line'] + 1}: {d['message']}"
        for d in report["generalDiagnostics"]
    ]

    assert [] == problems, "\n".join(problems)


def test_usage_file_imports() -> None:
    """The usage file is valid Python that imports the public API at runtime."""
    spec = importlib.util.spec_from_file_location("typecheck_usage", USAGE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert callable(module.single_call)
