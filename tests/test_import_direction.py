"""A station installs no torch: sensors, runtime and exporters never import torch or training."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TORCH_FREE = ("sensors", "runtime", "exporters")
FORBIDDEN = ("torch", "training", "onnxscript")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", TORCH_FREE)
def test_package_source_never_imports_torch_or_training(package):
    files = sorted((REPO / package).rglob("*.py"))
    assert files, f"no sources found for {package}"
    offenders = {str(f.relative_to(REPO)): sorted(_imports(f) & set(FORBIDDEN)) for f in files}
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"torch-free packages import forbidden modules: {offenders}"


def test_sensors_imports_no_other_project_package():
    for f in sorted((REPO / "sensors").rglob("*.py")):
        bad = _imports(f) & {"training", "runtime", "exporters"}
        assert not bad, f"{f.relative_to(REPO)} imports {sorted(bad)}: sensors must import nothing of ours"


def test_importing_runtime_modules_loads_no_torch():
    code = (
        "import importlib, pkgutil, sys\n"
        "for pkg in ('sensors', 'runtime', 'exporters'):\n"
        "    mod = importlib.import_module(pkg)\n"
        "    for info in pkgutil.walk_packages(mod.__path__, pkg + '.'):\n"
        "        if info.name.endswith('__main__'):\n"
        "            continue\n"
        "        importlib.import_module(info.name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'training'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"torch-free packages pulled in: {out.stdout.strip()}"
