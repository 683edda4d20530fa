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
Prints figures; it is not a test. ``--report FILE`` keeps them as JSON; ``--markdown A.json B.json``
prints README's table from such files (README, "Benchmarks").
"""

from __future__ import annotations

import argparse
import json
import os
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
from sensors.core.cli_util import add_list_argument, add_report_arguments, emit_report
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


def measure(fns: dict[str, Callable[[], object]], warmup: int, iters: int, block: int = 10,
            progress: bool = True) -> dict[str, np.ndarray]:
    """Interleaved timing in blocks: each round runs every variant for one untimed call (it absorbs
    the thread pools of the previous variant winding down) then ``block`` timed calls, so slow drifts
    of the machine's load hit every variant alike. Returns name -> per-call seconds [iters]."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    rounds = -(-iters // block)
    for _ in tqdm(range(rounds), desc="timing", unit="round", leave=False, disable=not progress):
        for name, fn in fns.items():
            fn()
            for _ in range(block):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return {name: np.asarray(t[:iters]) for name, t in times.items()}


def summary(name: str, n_params: int, times: dict[str, np.ndarray], bench: BenchConfig, diff: float,
            fusion: str) -> dict:
    """The figures of one model as a JSON-able dict (what --report writes)."""
    variants_ = {k: {"median_ms": round(float(np.median(v)) * 1e3, 4),
                     "p90_ms": round(float(np.percentile(v, 90)) * 1e3, 4)} for k, v in times.items()}
    med = {k: v["median_ms"] for k, v in variants_.items()}
    return {"preset": name, "fusion": fusion, "parameters": int(n_params), "threads": bench.threads,
            "warmup": bench.warmup, "iters": bench.iters, "torch": torch.__version__, "onnxruntime": ort.__version__,
            "cpu_count": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2), "variants": variants_,
            "ratios": {"ort_pose_vs_torch_eager": round(med["ort pose"] / med["torch eager"], 4),
                       "ort_coalitions_vs_ort_pose": round(med["ort 16 coal"] / med["ort pose"], 4),
                       "ort_16_runs_vs_ort_pose": round(med["ort 16 runs"] / med["ort pose"], 4),
                       "ort_daz_vs_ort_coalitions": round(med["ort 16 coal daz"] / med["ort 16 coal"], 4)},
            "daz_max_output_difference": diff,
            "targets": {"ort_pose_vs_torch_eager": TARGET_ORT_VS_TORCH,
                        "ort_coalitions_vs_ort_pose": TARGET_COALITIONS_VS_PLAIN}}


def report(r: dict) -> str:
    """The text table of one model's summary."""
    lines = [f"preset {r['preset']}, fusion {r['fusion']}, {r['parameters'] / 1e6:.2f} M parameters, batch 1, "
             f"torch and onnxruntime threads {r['threads']}, warm-up {r['warmup']}, {r['iters']} timed calls "
             f"(torch {r['torch']}, onnxruntime {r['onnxruntime']})",
             "| variant | median ms | p90 ms |", "|---|---:|---:|"]
    lines += [f"| {k} | {v['median_ms']:.3f} | {v['p90_ms']:.3f} |" for k, v in r["variants"].items()]
    r1, r2, r3, r4 = (r["ratios"][k] for k in ("ort_pose_vs_torch_eager", "ort_coalitions_vs_ort_pose",
                                               "ort_16_runs_vs_ort_pose", "ort_daz_vs_ort_coalitions"))
    lines += [
        f"ort pose / torch eager      = {r1:.2f}  (target <= {TARGET_ORT_VS_TORCH}: "
        f"{'met' if r1 <= TARGET_ORT_VS_TORCH else 'NOT met'})",
        f"ort 16 coal / ort pose      = {r2:.2f}  (target <= {TARGET_COALITIONS_VS_PLAIN}: "
        f"{'met' if r2 <= TARGET_COALITIONS_VS_PLAIN else 'NOT met'})",
        f"ort 16 runs / ort pose      = {r3:.2f}",
        f"ort 16 coal daz / 16 coal   = {r4:.2f}  (denormals as zero; largest output difference "
        f"{r['daz_max_output_difference']:.1e})",
    ]
    return "\n".join(lines)


ROWS = {"torch eager": "torch eager (pose)", "ort pose": "onnxruntime (pose)",
        "ort 16 coal": "onnxruntime, one frame with all 16 coalitions (encoders once)",
        "ort 16 runs": "onnxruntime, 16 separate runs"}


def _ms(x: float) -> str:
    return f"{x:.3g}" if x < 10 else f"{x:.1f}"


def _threads(r: dict) -> str:
    return f"{r['threads']} thread{'s' if r['threads'] > 1 else ''}"


def markdown(reports: list[dict]) -> str:
    """README's table of one model measured at several thread counts (one --report file each)."""
    head = " | ".join(f"{_threads(r)}: median / p90 ms" for r in reports)
    lines = [f"| per frame, batch 1 | {head} |", "|---|" + "---|" * len(reports)]
    for key, label in ROWS.items():
        cells = " | ".join(f"{_ms(r['variants'][key]['median_ms'])} / {_ms(r['variants'][key]['p90_ms'])}"
                           for r in reports)
        lines.append(f"| {label} | {cells} |")
    ratio = ", ".join(f"{r['ratios']['ort_pose_vs_torch_eager']:.2f} ({_threads(r)})" for r in reports)
    coal = " and ".join(f"{r['ratios']['ort_coalitions_vs_ort_pose']:.2f}" for r in reports)
    met1 = all(r["ratios"]["ort_pose_vs_torch_eager"] <= TARGET_ORT_VS_TORCH for r in reports)
    met2 = all(r["ratios"]["ort_coalitions_vs_ort_pose"] <= TARGET_COALITIONS_VS_PLAIN for r in reports)
    lines += ["", f"onnxruntime / torch eager = {ratio} — target ≤ {TARGET_ORT_VS_TORCH}: "
              f"{'met' if met1 else 'NOT met'}. A frame with all 16 coalitions / a plain frame = {coal} — target "
              f"≤ {TARGET_COALITIONS_VS_PLAIN}: {'met' if met2 else 'NOT met'}."]
    return "\n".join(lines)


def bench(cfg: BenchConfig, progress: bool = True) -> list[dict]:
    torch.set_num_threads(cfg.threads)
    out = []
    with tempfile.TemporaryDirectory(prefix="awc_bench_") as tmp:
        for preset in cfg.presets:
            fns, n_params, fusion = variants(preset, cfg, Path(tmp))
            diff = max(float(np.abs(a - b).max()) for a, b in zip(fns["ort 16 coal"](), fns["ort 16 coal daz"](),
                                                                  strict=True))
            times = measure(fns, cfg.warmup, cfg.iters, progress=progress)
            out.append(summary(cfg.checkpoint or preset, n_params, times, cfg, diff, fusion))
            if cfg.checkpoint:
                break   # the checkpoint's own preset: one model
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_list_argument(parser, "--preset", default=["small"], metavar="P", help="model presets to measure (small, paper)")
    parser.add_argument("--fusion", default="concat", choices=FUSIONS)
    parser.add_argument("--threads", type=int, default=2, help="torch and onnxruntime intra-op threads")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--iters", type=int, default=200, help="timed calls per variant (interleaved in blocks of 10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", help="measure this trained model (a run's best.pt) instead of --preset")
    add_report_arguments(parser)
    add_list_argument(parser, "--markdown", metavar="REPORT", help="measure nothing: print README's table from "
                      "these --report files (one per thread count, e.g. the 1- and 2-thread runs)")


def run(args: argparse.Namespace) -> int:
    if args.markdown:
        print(markdown([json.loads(Path(f).read_text())["presets"][0] for f in args.markdown]))
        return 0
    cfg = BenchConfig(presets=tuple(args.preset), fusion=args.fusion, threads=args.threads,
                      warmup=args.warmup, iters=args.iters, seed=args.seed, checkpoint=args.checkpoint)
    results = bench(cfg, progress=not args.no_progress)
    emit_report(args, {"presets": results}, "\n\n".join(report(r) for r in results))
    return 0
