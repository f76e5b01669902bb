"""Every Python block of the documentation type-checks under mypy --strict and pyright strict.

The blocks are those that tests/test_docs.py finds in docs/*.md and README.md, the
``not-run`` ones included: a reader copies them all. A block that shows a file of the
repository (``--8<-- "examples/x.py"``) is checked as that file. Each block is written
to a module of its own, named after its page and line, so that an error points at it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mypy import api as mypy_api
from test_docs import PYTHON_BLOCKS, ROOT, Block, snippet_paths

#: Seconds pyright may take over every block.
PYRIGHT_TIMEOUT = 300


def module_name(block: Block) -> str:
    """``docs/testing.md:38`` -> ``docs_testing_md_38``."""
    return re.sub(r"\W", "_", block.name)


def write_blocks(folder: Path) -> dict[Path, str]:
    """Write the blocks to *folder*; map each file to check to the block it shows."""
    files: dict[Path, str] = {}
    for block in PYTHON_BLOCKS:
        included = snippet_paths(block)
        if included is None:
            path = folder / f"{module_name(block)}.py"
            path.write_text(block.code, encoding="utf-8")
            files[path] = block.name
        else:
            for name in included:
                files[ROOT / name] = f"{block.name} ({name})"
    return files


@pytest.fixture(scope="module")
def block_files(tmp_path_factory: pytest.TempPathFactory) -> dict[Path, str]:
    """The documentation's blocks as files, with the block each one comes from."""
    return write_blocks(tmp_path_factory.mktemp("doc-blocks"))


def test_every_block_is_checked(block_files: dict[Path, str]) -> None:
    """The pages' Python blocks and the examples they show are all among the checked files."""
    assert len(PYTHON_BLOCKS) <= len(block_files)
    assert any(str(path).endswith("examples/fastapi_app.py") for path in block_files)
    assert any(name.startswith("README.md:") for name in block_files.values())


@pytest.mark.slow
def test_doc_blocks_pass_mypy_strict(
    block_files: dict[Path, str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """mypy --strict finds nothing to say about any block."""
    cache = tmp_path_factory.mktemp("mypy-cache")
    stdout, stderr, status = mypy_api.run(
        [
            *("--strict", "--no-error-summary", "--show-error-codes"),
            *("--cache-dir", str(cache)),
            *(str(path) for path in block_files),
        ]
    )

    assert ("", "", 0) == (stdout, stderr, status), _named(stdout, block_files)


@pytest.mark.slow
def test_doc_blocks_pass_pyright_strict(
    block_files: dict[Path, str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """pyright in strict mode finds nothing to say about any block."""
    config = tmp_path_factory.mktemp("pyright") / "pyrightconfig.json"
    config.write_text(json.dumps({"typeCheckingMode": "strict", "pythonVersion": "3.11"}))
    done = subprocess.run(
        [
            *(sys.executable, "-m", "pyright", "--outputjson"),
            *("--pythonpath", sys.executable, "--project", str(config)),
            *(str(path) for path in block_files),
        ],
        capture_output=True,
        text=True,
        timeout=PYRIGHT_TIMEOUT,
        check=False,
    )
    try:
        report = json.loads(done.stdout)
    except ValueError:
        pytest.fail(f"pyright did not run: {done.stdout}{done.stderr}")
    problems = [
        f"{block_files.get(Path(d['file']), d['file'])}, line {d['range']['start']['line'] + 1}:"
        f" {d['message']} ({d.get('rule', d['severity'])})"
        for d in report["generalDiagnostics"]
    ]

    assert [] == problems, "\n".join(problems)
    assert len(block_files) == report["summary"]["filesAnalyzed"]


def _named(output: str, files: dict[Path, str]) -> str:
    """mypy's output with each file replaced by the block it comes from."""
    for path, name in files.items():
        output = output.replace(str(path), name)
    return output
