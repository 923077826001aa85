"""Lower layers never import upper ones: datamodules < lightning_modules < pipelines.

Errors and atomic writes live in ``datamodules`` (the lowest layer) so every layer can use them; this
test reads every module's imports (including ones inside functions) and names any that go upward.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["datamodules", "lightning_modules", "pipelines"]


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_no_module_imports_a_higher_layer():
    upward = []
    for level, layer in enumerate(LAYERS):
        higher = set(LAYERS[level + 1 :])
        for path in sorted((ROOT / layer).rglob("*.py")):
            for package in sorted(_imported_packages(path) & higher):
                upward.append(f"{path.relative_to(ROOT)} imports {package}")
    assert not upward, "lower layers import upper ones:\n" + "\n".join(upward)


def test_the_check_sees_an_upward_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from pipelines.errors import ConfigError\n")
    assert "pipelines" in _imported_packages(module)
