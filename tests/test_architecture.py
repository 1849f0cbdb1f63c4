"""The layers of ARCHITECTURE.md hold: the page's table is the import-linter contract, the contracts and ruff
pass on the code, and they fail when someone adds an upward import or hides one inside a function.

The failing cases run the real tools on a copy of the code with one deliberate violation added, so the
checks are shown to bite, not just to pass.
"""
import ast
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

BASE_DIR = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
APPS = ("config", "audit", "ledger", "exceptions_queue", "billing_sync", "portal")


def _pyproject() -> dict:
    return tomllib.loads((BASE_DIR / "pyproject.toml").read_text())


def _contract(contract_id: str) -> dict:
    return next(c for c in _pyproject()["tool"]["importlinter"]["contracts"] if c["id"] == contract_id)


def _table_rows() -> list[tuple[int, str, str]]:
    """(layer, package, may import) of ARCHITECTURE.md's layers table, in the page's order."""
    text = (BASE_DIR / "ARCHITECTURE.md").read_text()
    table = text.split("<!-- layers:", 1)[1].split("\n\n", 1)[0]
    rows = []
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].isdigit():
            rows.append((int(cells[0]), cells[1].strip("`"), cells[3]))
    return rows


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(BIN / "lint-imports"), "--no-cache"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300)


def _copy_of_the_code(tmp_path: Path) -> Path:
    root = tmp_path / "code"
    for app in APPS:
        shutil.copytree(BASE_DIR / app, root / app, ignore=shutil.ignore_patterns("__pycache__", "static",
                                                                                    "templates"))
    shutil.copy(BASE_DIR / "pyproject.toml", root / "pyproject.toml")
    return root


def test_the_layers_table_is_the_contract():
    rows = _table_rows()
    assert [layer for layer, _, _ in rows] == list(range(len(rows)))
    packages = [package for _, package, _ in rows]
    assert packages == list(reversed(_contract("layers")["layers"])), "ARCHITECTURE.md's table and the contract differ"
    assert tuple(packages) == APPS == tuple(_pyproject()["tool"]["importlinter"]["root_packages"])
    for layer, package, may_import in rows[1:]:
        named = set(re.findall(r"`(\w+)`", may_import))
        below = set(packages[:layer])
        if package == "portal":
            assert "every layer below" in may_import
        else:
            assert named == below, f"{package} may import {sorted(below)} by the contract, the page says {sorted(named)}"


def test_the_import_contracts_hold():
    result = _lint_imports(BASE_DIR)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_an_upward_import_breaks_the_layers(tmp_path):
    root = _copy_of_the_code(tmp_path)
    models = root / "ledger" / "models.py"
    models.write_text(models.read_text() + "\nfrom billing_sync import services as _upward  # noqa: E402,F401\n")
    result = _lint_imports(root)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout and "ledger.models -> billing_sync.services" in result.stdout, result.stdout[-3000:]


def test_a_thin_module_reaching_into_another_apps_models_breaks_its_contract(tmp_path):
    root = _copy_of_the_code(tmp_path)
    views = root / "billing_sync" / "views" / "events.py"
    views.write_text(views.read_text() + "\nfrom ledger.models import Journal as _Journal  # noqa: E402,F401\n")
    result = _lint_imports(root)
    assert result.returncode != 0
    assert "billing_sync.views.events -> ledger.models" in result.stdout, result.stdout[-3000:]


@pytest.mark.parametrize("body, passes", [
    ("from ledger import services\n\n\ndef f():\n    return services\n", True),
    ("def f():\n    from ledger import services\n\n    return services\n", False),
])
def test_ruff_refuses_an_import_inside_a_function(tmp_path, body, passes):
    module = tmp_path / "ledger" / "example.py"
    module.parent.mkdir()
    module.write_text(f'"""Example."""\n{body}')
    result = subprocess.run([str(BIN / "ruff"), "check", "--no-cache", "--config", str(BASE_DIR / "pyproject.toml"),
                             str(module)], capture_output=True, text=True, timeout=60)
    assert (result.returncode == 0) is passes, result.stdout
    if not passes:
        assert "PLC0415" in result.stdout


def test_ruff_passes_on_the_code():
    result = subprocess.run([str(BIN / "ruff"), "check", "--no-cache", *APPS, "bench", "tests", "manage.py"],
                            cwd=BASE_DIR, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:]


def test_every_module_starts_with_a_one_paragraph_docstring():
    """Each module says its role in one paragraph; longer design notes live in ARCHITECTURE.md."""
    offenders = []
    for app in APPS:
        for path in sorted((BASE_DIR / app).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            doc = ast.get_docstring(ast.parse(path.read_text()))
            if not doc or "\n\n" in doc.strip():
                offenders.append(str(path.relative_to(BASE_DIR)))
    assert not offenders, f"no docstring, or more than one paragraph: {offenders}"
