"""The layering contract (.importlinter, docs/architecture.md) is enforced: CI's lint-imports
passes on the package as it is and fails when a lower layer imports an upper one."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))


def lint(root: Path) -> subprocess.CompletedProcess:
    """lint-imports with the repository's contract over the ``tvr`` package in ``root``."""
    return subprocess.run([LINT, "--config", str(root / ".importlinter")], cwd=root,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def package_copy(tmp_path: Path) -> Path:
    if not Path(LINT).exists():
        pytest.skip("import-linter is not installed (pip install -r requirements-test.txt)")
    shutil.copytree(REPO / "tvr", tmp_path / "tvr",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pt"))
    shutil.copy(REPO / ".importlinter", tmp_path)
    return tmp_path


def test_the_package_keeps_its_layers(package_copy: Path) -> None:
    result = lint(package_copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Layers only look down KEPT" in result.stdout


@pytest.mark.parametrize("lower, upper", [("tvr/losses/contrastive.py", "tvr.models.gare"),
                                          ("tvr/data/loaders.py", "tvr.training.checkpoint"),
                                          ("tvr/storage.py", "tvr.settings"),
                                          ("tvr/index/store.py", "tvr.cli.flags")])
def test_an_upward_import_breaks_the_contract(package_copy: Path, lower: str, upper: str) -> None:
    with open(package_copy / lower, "a") as module:
        module.write(f"\nimport {upper}  # an upward import\n")
    result = lint(package_copy)
    assert result.returncode != 0
    assert "Layers only look down BROKEN" in result.stdout
    importer = lower.removesuffix(".py").replace("/", ".")
    assert f"{importer} -> {upper}" in result.stdout, result.stdout
