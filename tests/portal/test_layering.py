"""The portal is the top layer: no module of the apps below it imports it (ARCHITECTURE.md, layer 5).

Only the URL map (config/urls.py) reaches it by import; the settings name its middleware, context
processor, template builtin and lockout page as dotted strings. A scan of every module of config, audit,
ledger, exceptions_queue and billing_sync (migrations and management commands included) keeps it so,
until an import-linter contract says the same in CI.
"""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
LOWER_LAYERS = ("config", "audit", "ledger", "exceptions_queue", "billing_sync")
ALLOWED = {"config/urls.py"}


def _imports_of(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def _portal_imports(root: Path, packages) -> list[str]:
    found = []
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if rel in ALLOWED:
                continue
            found += [f"{rel} imports {name}" for name in sorted(_imports_of(path))
                      if name == "portal" or name.startswith("portal.")]
    return found


def test_no_lower_layer_imports_the_portal():
    assert not _portal_imports(ROOT, LOWER_LAYERS)


def test_the_scan_sees_an_upward_import(tmp_path):
    (tmp_path / "ledger").mkdir()
    (tmp_path / "ledger" / "probe.py").write_text("from portal import lineage\nimport portal.metrics\n\n\n"
                                                  "def late():\n    from portal.web import queue\n")
    assert _portal_imports(tmp_path, ["ledger"]) == [f"ledger/probe.py imports {name}" for name in (
        "portal", "portal.metrics", "portal.web")]
