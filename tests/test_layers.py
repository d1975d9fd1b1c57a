"""Imports go one way (import-linter, configured in pyproject.toml), and the front doors that need no model load
no torch: `trainspect --help` and `trainspect web`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).parent / "lint-imports"
PACKAGES = ("toolserver", "tools", "session", "web_mirror")


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}  # the tree under test, ahead of the installed (editable) one
    return subprocess.run([str(LINT), "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_the_import_contracts_hold() -> None:
    run = lint(ROOT)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "Contracts: 4 kept, 0 broken." in run.stdout


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("layers")
    for name in PACKAGES:
        shutil.copytree(ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__", "static"))
    shutil.copy(ROOT / "pyproject.toml", root)
    return root


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        ("session/state.py", "import toolserver.runner", "one-way layers"),  # a lower layer reaching up
        ("toolserver/contract.py", "import session.state", "the contract is a leaf"),
        ("web_mirror/wire.py", "import torch", "the web mirror needs only the contract"),
        ("web_mirror/cards.py", "from session.state import home", "the web mirror needs only the contract"),
        ("toolserver/render.py", "import toolserver.cli", "no import cycles"),  # cli imports render
    ],
)
def test_a_wrong_import_breaks_its_contract(tree_copy: Path, module: str, line: str, broken: str) -> None:
    path = tree_copy / module
    original = path.read_text()
    path.write_text(original + f"\n{line}  # deliberately wrong\n")
    try:
        run = lint(tree_copy)
    finally:
        path.write_text(original)
    assert run.returncode != 0, run.stdout[-2000:]
    assert broken in run.stdout and "BROKEN" in run.stdout.split(broken, 1)[1].splitlines()[0], run.stdout[-3000:]


def _modules_after(code: str) -> set[str]:
    """Run `code` in a fresh interpreter and return the names in its sys.modules afterwards."""
    probe = f"import sys\ntry:\n{code}\nexcept SystemExit:\n    pass\nprint(' '.join(sys.modules), file=sys.stderr)\n"
    run = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TRAINSPECT_HOME": str(ROOT / "test-artifacts" / "layers-home")},
    )
    return set(run.stderr.strip().splitlines()[-1].split())


def test_help_and_the_web_mirror_load_no_torch(tmp_path: Path) -> None:
    for argv in (["--help"], ["weight-diff", "--help"], ["session", "start", "--help"]):
        loaded = _modules_after(f"    from toolserver.cli import main\n    main({argv!r})")
        assert "torch" not in loaded and "transformers" not in loaded, argv
    loaded = _modules_after(
        "    from toolserver.registry import mirror_contract\n    from web_mirror.app import create_app\n"
        f"    create_app(__import__('pathlib').Path({str(tmp_path)!r}), contract=mirror_contract())"
    )
    assert "web_mirror.app" in loaded and "torch" not in loaded
