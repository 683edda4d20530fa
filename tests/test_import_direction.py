"""The layering (docs/architecture.md): a station installs no torch, so sensors, runtime and
exporters never import torch or training; the shared core (sensors.core) imports nothing of the
sensor side; exporters import only the core of sensors."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TORCH_FREE = ("sensors", "runtime", "exporters")
FORBIDDEN = ("torch", "training", "onnxscript")


def _modules(path: Path) -> set[str]:
    """Every module ``path`` imports, by full dotted name (``from a.b import c`` gives ``a.b`` and
    ``a.b.c``: c may be a module)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _imports(path: Path) -> set[str]:
    """Top-level packages ``path`` imports."""
    return {n.split(".")[0] for n in _modules(path)}


def _ours(path: Path, *packages: str) -> set[str]:
    """The modules of ``packages`` that ``path`` imports."""
    return {n for n in _modules(path) if n.split(".")[0] in packages}


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


def test_core_imports_nothing_of_the_sensor_side():
    """sensors.core is what every side shares: it imports nothing of ours outside itself."""
    files = sorted((REPO / "sensors" / "core").rglob("*.py"))
    assert len(files) > 5
    for f in files:
        bad = sorted(n for n in _ours(f, "sensors", "training", "runtime", "exporters")
                     if n != "sensors.core" and not n.startswith("sensors.core."))
        assert not bad, f"{f.relative_to(REPO)} imports {bad}: the shared core imports only sensors.core"


def test_exporters_import_only_the_core_of_sensors():
    """Exporters (metrics, pose stream, recorders) stand on the shared core, not on the sensor side."""
    for f in sorted((REPO / "exporters").rglob("*.py")):
        bad = sorted(n for n in _ours(f, "sensors") if n != "sensors.core" and not n.startswith("sensors.core."))
        assert not bad, f"{f.relative_to(REPO)} imports {bad}: exporters import only sensors.core of sensors"


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


# What a station installs (pyproject's base dependencies + the cpu extra) must be enough for every
# station module: import them all with the training-only packages made unimportable.
TRAIN_ONLY = ("torch", "training", "onnx", "onnxscript", "sklearn", "matplotlib", "tensorboard")
# `sensors realism` measures the generator with scikit-learn (the `sim` extra); nothing else imports it.
NEEDS_SIM_EXTRA = ("sensors.simulate.realism",)


def test_station_modules_import_without_training_only_packages():
    code = (
        "import importlib, importlib.abc, pkgutil, sys\n"
        f"blocked = {TRAIN_ONLY!r}\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in blocked:\n"
        "            raise ModuleNotFoundError(f'blocked: {name}')\n"
        "sys.meta_path.insert(0, Block())\n"
        "n = 0\n"
        "for pkg in ('sensors', 'runtime', 'exporters'):\n"
        "    mod = importlib.import_module(pkg)\n"
        "    for info in pkgutil.walk_packages(mod.__path__, pkg + '.'):\n"
        f"        if info.name.endswith('__main__') or info.name in {NEEDS_SIM_EXTRA!r}:\n"
        "            continue\n"
        "        importlib.import_module(info.name)\n"
        "        n += 1\n"
        "print(n)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout) > 20, "walked too few modules to mean anything"


def test_base_dependencies_hold_no_training_only_package():
    tomllib = pytest.importorskip("tomllib")

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    base = {d.split(">")[0].split("=")[0].split("<")[0].strip().lower() for d in project["dependencies"]}
    assert not base & {"torch", "onnx", "onnxscript", "scikit-learn", "matplotlib"}, base
    extras = project["optional-dependencies"]
    assert any(d.startswith("scikit-learn") for d in extras["train"]) and any(d.startswith("onnx>") for d in extras["train"])
    assert not any("onnxscript" in d for group in extras.values() for d in group)
    assert any(d.startswith("scikit-learn") for d in extras["sim"])


def test_rehabilitation_imports_nothing_of_the_runtime_outside_it():
    """runtime.rehab is a sub-package the pipeline calls; it never reaches back into the runtime."""
    files = sorted((REPO / "runtime" / "rehab").rglob("*.py"))
    assert len(files) >= 7
    for f in files:
        bad = sorted(n for n in _ours(f, "runtime") if n != "runtime.rehab" and not n.startswith("runtime.rehab."))
        assert not bad, f"{f.relative_to(REPO)} imports {bad}: runtime.rehab imports only runtime.rehab of the runtime"
