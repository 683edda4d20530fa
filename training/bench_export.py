"""Per-frame latency figures of the exported model (``training bench-export``).

For one preset (untrained weights: latency does not depend on their values), measured side by
side in one run, interleaved in blocks so machine load hits every variant alike:

* ``torch eager``   the model's plain forward, batch 1, pose only
* ``ort pose``      the same plain forward exported to ONNX, run by onnxruntime (a plain
                    single-coalition frame)
* ``ort 16 coal``   the served graph: encoders once, fusion head for all 16 coalitions
* ``ort 16 runs``   16 separate plain runs, one per coalition mask (what the coalition graph avoids)
* ``ort 16 coal daz`` the served graph with onnxruntime's ``session.set_denormal_as_zero``: whether
                    flushing subnormals (as training does, docs/training.md) would speed up serving;
                    the largest output difference to ``ort 16 coal`` is printed beside it

``--checkpoint RUN/best.pt`` measures a trained model (its own preset and weights) instead of a
preset's untrained one: subnormal values only appear in trained weights and activations.

Targets (small preset, 2-core CPU): ort pose <= 0.5 x torch eager; ort 16 coal <= 1.5 x ort pose.
Prints figures; it is not a test.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from tqdm import tqdm

from sensors.core import schema
from sensors.core.cli_util import add_list_argument
from sensors.core.contract import ModelContract
from training.config import FUSIONS, model_contract, resolve
from training.export import export_onnx, export_pose_only, to_torch
from training.model import build_model

TARGET_ORT_VS_TORCH = 0.5
TARGET_COALITIONS_VS_PLAIN = 1.5


@dataclass(frozen=True)
class BenchConfig:
    presets: tuple[str, ...] = ("small",)
    fusion: str = "concat"
    threads: int = 2
    warmup: int = 20
    iters: int = 200
    seed: int = 0
    checkpoint: str | None = None   # a trained model instead of the presets' untrained ones

    def __post_init__(self):
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.threads < 1 or self.warmup < 0 or self.iters < 5:
            raise ValueError(f"need threads >= 1, warmup >= 0, iters >= 5; got {self.threads}, "
                             f"{self.warmup}, {self.iters}")


def frame_inputs(contract: ModelContract, seed: int) -> dict[str, np.ndarray]:
    """One realistic frame (batch 1): every modality present, LiDAR at its cap, mmWave 20 points."""
    rng = np.random.default_rng(seed)
    shapes = contract.shapes(batch=1)
    out = {n: rng.normal(0, 0.5, size=shapes[n]).astype(np.float32) for n in schema.MODEL_INPUTS
           if not n.endswith("_mask")}
    for spec in schema.MODALITY_SPECS.values():
        if spec.kind == schema.CSI:   # min-max normalised to [0, 1]
            out[spec.name] = rng.random(shapes[spec.name], dtype=np.float32)
    for spec in schema.of_kind(schema.POINTS):   # a typical frame's points, up to the cap
        cap = contract.size(spec)
        out[f"{spec.name}_mask"] = np.arange(cap)[None] < min(spec.typical_points, cap)
    out["presence"] = np.ones((1, schema.N_MODALITIES), np.float32)
    return out


def _session(path: Path, threads: int, denormal_as_zero: bool = False) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    if denormal_as_zero:
        opts.add_session_config_entry("session.set_denormal_as_zero", "1")
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def variants(preset: str, cfg_bench: BenchConfig, workdir: Path) -> tuple[dict[str, Callable[[], object]], int, str]:
    """name -> zero-argument callable that processes one frame; the model's parameter count and fusion."""
    torch.manual_seed(cfg_bench.seed)
    if cfg_bench.checkpoint:
        from training.checkpoint import load_checkpoint

        model, cfg, _ = load_checkpoint(cfg_bench.checkpoint)
    else:
        cfg = resolve(preset=preset, flags={"model": {"fusion": cfg_bench.fusion}})
        model = build_model(cfg.model).eval()
    contract = model_contract(cfg)
    full = workdir / f"{preset}_coalitions.onnx"
    plain = workdir / f"{preset}_pose.onnx"
    export_onnx(model, cfg, full, calibration=None, no_calibration_reason="latency benchmark")
    export_pose_only(model, contract, plain)
    s_full, s_plain = _session(full, cfg_bench.threads), _session(plain, cfg_bench.threads)
    s_daz = _session(full, cfg_bench.threads, denormal_as_zero=True)
    feed = frame_inputs(contract, cfg_bench.seed)
    args = to_torch(feed)
    per_coalition = []
    for c in range(schema.N_COALITIONS):
        f = dict(feed)
        f["presence"] = schema.COALITION_MASKS[c][None].copy()
        per_coalition.append(f)

    def torch_eager():
        with torch.inference_mode():
            return model(*args)

    def sixteen_runs():
        return [s_plain.run(["pose"], f) for f in per_coalition]

    n_params = sum(p.numel() for p in model.parameters())
    return {
        "torch eager": torch_eager,
        "ort pose": lambda: s_plain.run(["pose"], feed),
        "ort 16 coal": lambda: s_full.run(list(schema.MODEL_OUTPUTS), feed),
        "ort 16 runs": sixteen_runs,
        "ort 16 coal daz": lambda: s_daz.run(list(schema.MODEL_OUTPUTS), feed),
    }, n_params, cfg.model.fusion


def measure(fns: dict[str, Callable[[], object]], warmup: int, iters: int, block: int = 10
            ) -> dict[str, np.ndarray]:
    """Interleaved timing in blocks: each round runs every variant for one untimed call (it absorbs
    the thread pools of the previous variant winding down) then ``block`` timed calls, so slow drifts
    of the machine's load hit every variant alike. Returns name -> per-call seconds [iters]."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    rounds = -(-iters // block)
    for _ in tqdm(range(rounds), desc="timing", unit="round", leave=False):
        for name, fn in fns.items():
            fn()
            for _ in range(block):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return {name: np.asarray(t[:iters]) for name, t in times.items()}


def report(preset: str, n_params: int, times: dict[str, np.ndarray], bench: BenchConfig, diff: float,
           fusion: str) -> str:
    med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
    p90 = {k: float(np.percentile(v, 90)) * 1e3 for k, v in times.items()}
    lines = [f"preset {preset}, fusion {fusion}, {n_params / 1e6:.2f} M parameters, batch 1, "
             f"torch and onnxruntime threads {bench.threads}, warm-up {bench.warmup}, {bench.iters} timed calls "
             f"(torch {torch.__version__}, onnxruntime {ort.__version__})",
             "| variant | median ms | p90 ms |", "|---|---:|---:|"]
    lines += [f"| {k} | {med[k]:.3f} | {p90[k]:.3f} |" for k in times]
    r1 = med["ort pose"] / med["torch eager"]
    r2 = med["ort 16 coal"] / med["ort pose"]
    r3 = med["ort 16 runs"] / med["ort pose"]
    r4 = med["ort 16 coal daz"] / med["ort 16 coal"]
    lines += [
        f"ort pose / torch eager      = {r1:.2f}  (target <= {TARGET_ORT_VS_TORCH}: "
        f"{'met' if r1 <= TARGET_ORT_VS_TORCH else 'NOT met'})",
        f"ort 16 coal / ort pose      = {r2:.2f}  (target <= {TARGET_COALITIONS_VS_PLAIN}: "
        f"{'met' if r2 <= TARGET_COALITIONS_VS_PLAIN else 'NOT met'})",
        f"ort 16 runs / ort pose      = {r3:.2f}",
        f"ort 16 coal daz / 16 coal   = {r4:.2f}  (denormals as zero; largest output difference "
        f"{diff:.1e})",
    ]
    return "\n".join(lines)


def bench(cfg: BenchConfig) -> str:
    torch.set_num_threads(cfg.threads)
    out = []
    with tempfile.TemporaryDirectory(prefix="awc_bench_") as tmp:
        for preset in cfg.presets:
            fns, n_params, fusion = variants(preset, cfg, Path(tmp))
            diff = max(float(np.abs(a - b).max()) for a, b in zip(fns["ort 16 coal"](), fns["ort 16 coal daz"](),
                                                                  strict=True))
            out.append(report(cfg.checkpoint or preset, n_params, measure(fns, cfg.warmup, cfg.iters), cfg, diff, fusion))
            if cfg.checkpoint:
                break   # the checkpoint's own preset: one model
    return "\n\n".join(out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_list_argument(parser, "--preset", default=["small"], metavar="P", help="model presets to measure (small, paper)")
    parser.add_argument("--fusion", default="concat", choices=FUSIONS)
    parser.add_argument("--threads", type=int, default=2, help="torch and onnxruntime intra-op threads")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--iters", type=int, default=200, help="timed calls per variant (interleaved in blocks of 10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", help="measure this trained model (a run's best.pt) instead of --preset")


def run(args: argparse.Namespace) -> int:
    cfg = BenchConfig(presets=tuple(args.preset), fusion=args.fusion, threads=args.threads,
                      warmup=args.warmup, iters=args.iters, seed=args.seed, checkpoint=args.checkpoint)
    print(bench(cfg))
    return 0
