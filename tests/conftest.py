"""Shared fixtures: a tiny generated MM-Fi-format dataset and the real MM-Fi sample artefacts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Two cores in CI: keep every test single-threaded in BLAS/torch.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    """The commands the tests start must see Ctrl-C as a user's shell gives it. pytest-xdist's
    workers (``make test`` runs two) start with SIGINT ignored, a disposition every child inherits
    through exec, and Python then installs no KeyboardInterrupt handler: a test's SIGINT would be
    lost. A worker restores Python's own handler, which exec resets to the default for children."""
    import signal

    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


# The longest modules first: with two workers each taking whole modules, the pages of the docs
# (about half the suite's time, one at a time) must not start last.
FIRST = ("test_docs.py", "test_prometheus_integration.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(FIRST)))   # stable: the rest keep their order


@pytest.fixture(autouse=True)
def ieee_subnormals():
    """Every test starts with IEEE subnormals, whatever ran before it in this process: importing
    ``training`` flushes them to zero (process state, for speed), onnxruntime turns that off again
    when it opens a session, and hypothesis refuses to generate floats while it is on. The tests of
    the setting itself (tests/test_train_speed.py) turn it on explicitly or run a fresh interpreter."""
    import sys

    if "torch" in sys.modules:
        sys.modules["torch"].set_flush_denormal(False)
    yield


def _shared_dir() -> Path:
    """``../shared`` beside the checkout, or $AWC_SHARED_DIR."""
    return Path(os.environ.get("AWC_SHARED_DIR", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def mmfi_sample_dir() -> Path:
    """Real MM-Fi artefacts (one CSI .mat frame, one ground-truth frame, CSI statistics)."""
    base = _shared_dir() / "data" / "mmfi-sample"
    hits = sorted(base.glob("*/frame001.mat"))
    if not hits:
        pytest.skip(f"real MM-Fi sample artefacts not found under {base} (set AWC_SHARED_DIR)")
    return hits[0].parent


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A `tiny` synthetic dataset in MM-Fi layout, generated once per test session."""
    from sensors.simulate import simulate

    root = tmp_path_factory.mktemp("mmfi_tiny")
    simulate(root, preset="tiny", seed=0)
    return root


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """An untrained ``tiny`` model exported to ONNX and loaded for the runtime (one per test module)."""
    pytest.importorskip("torch").set_num_threads(1)
    from runtime.inference import OnnxPoseModel
    from training.export import export_untrained

    path = export_untrained(tmp_path_factory.mktemp("model") / "tiny.onnx", preset="tiny", seed=0)
    return OnnxPoseModel.load(path, provider="cpu", intra_op_threads=1)
