"""Memory and time per epoch of training at full MM-Fi size, on generated data (no MM-Fi here).

    python -m training.bench_data --data data/mmfi-tiny --cache /tmp/p1cache --preset paper \\
        --sequences 448 --steps 4 [--device cpu] [--json FILE]

1. Builds a memory-mapped training cache of ``--sequences`` sequences (448 = MM-Fi P1, split S1,
   train: 14 actions x 32 subjects; 297 frames each) from the generated dataset at ``--data``,
   reading each of its sequences once and writing it as many times as needed (the model inputs are
   those of real generated sequences, repeated; the reader cost per sequence is measured and
   extrapolated, not paid 448 times).
2. Opens it as the trainer does (``training.data.open_mapped``) and runs the real ``Trainer`` for
   one "epoch" of ``--steps`` steps (``data.max_train = steps x batch``) of ``--preset``: the
   Fisher pass, Shapley and AWC included. The model inputs stay on disk; the split covers all rows.
3. Reads one full epoch of batches (every row once, shuffled) from the cache without the model:
   the data-loading cost per epoch, measured, not extrapolated.

Prints peak resident memory of this process, the in-memory size the arrays would have had, the
measured seconds per step / per Fisher pass / per data epoch, and the extrapolated time per epoch
(steps per epoch x step time + Fisher). Step time is this machine's (CPU unless ``--device``);
say so when quoting it.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from sensors.core import schema
from training import config as config_mod
from training import data as data_mod


def rss_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_now_mb(kind: str = "VmRSS") -> float:
    """VmRSS (all resident pages), RssAnon (the process' own memory) or RssFile (mapped file pages,
    page cache the kernel can drop) of this process, MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(kind + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def build_tiled_cache(cfg, folder: Path, n_sequences: int) -> dict:
    """A mapped 'train' cache of ``n_sequences`` x 297 frames from the generated sequences, cycled."""
    ds = data_mod._dataset(cfg, "all")
    per = schema.FRAMES_PER_SEQUENCE
    t0 = time.perf_counter()
    arrays = [ds.sequence_arrays(k) for k in ds.keys]
    read_s = (time.perf_counter() - t0) / len(ds.keys)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    t0 = time.perf_counter()
    files = {name: np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype=v.dtype,
                                             shape=(n_sequences * per, *v.shape[1:])) for name, v in arrays[0].items()}
    for s in range(n_sequences):
        for name, v in arrays[s % len(arrays)].items():
            files[name][s * per:(s + 1) * per] = v
    for a in files.values():
        a.flush()
    nbytes = sum(a.nbytes for a in files.values())
    del files
    keys = [ds.keys[s % len(ds.keys)] for s in range(n_sequences)]
    for name in ("env", "subject", "action"):
        np.save(folder / f"{name}.npy", np.repeat(np.array([getattr(k, name) for k in keys], dtype=str), per))
    np.save(folder / "frame.npy", np.tile(np.arange(per, dtype=np.int64), n_sequences))
    (folder / data_mod.COMPLETE).write_text(json.dumps({"frames": n_sequences * per, "tiled_from": len(ds.keys)}))
    return {"frames": n_sequences * per, "array_bytes": nbytes, "read_s_per_sequence": read_s,
            "write_s": time.perf_counter() - t0, "generated_sequences": len(ds.keys)}


def data_epoch_seconds(split, batch: int, seed: int = 0) -> float:
    """Read every row once in shuffled batches (what an epoch asks of the data), no model."""
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for idx in data_mod.batches(len(split), batch, gen, shuffle=True):
        split.batch(idx)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="a generated MM-Fi-format dataset (e.g. sensors simulate --preset tiny)")
    p.add_argument("--cache", required=True, help="folder for the mapped cache (GBs at paper size; deleted after)")
    p.add_argument("--preset", default="paper")
    p.add_argument("--sequences", type=int, default=448, help="448 = P1/S1 train; 1080 x 0.8 = 864 for P3")
    p.add_argument("--steps", type=int, default=4, help="training steps measured")
    p.add_argument("--batch", type=int, default=0, help="training batch for the step measurement (0 = the preset's)")
    p.add_argument("--fisher-samples", type=int, default=0, help="Fisher samples measured (0 = the preset's)")
    p.add_argument("--reuse", action="store_true", help="reuse a complete cache folder from a previous run")
    p.add_argument("--fisher-chunk", type=int, default=0, help="per-sample Fisher chunk (0 = the preset's)")
    p.add_argument("--no-data-epoch", action="store_true", help="skip the data-only epoch")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--keep", action="store_true", help="keep the cache folder")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from training import distributed
    from training.trainer import Trainer

    cfg = config_mod.resolve(args.preset, flags={"data": {"root": args.data}, "train": {"device": args.device}})
    folder = Path(args.cache) / "train-bench"
    report: dict = {"preset": args.preset, "sequences": args.sequences, "device": args.device,
                    "threads": args.threads, "batch": cfg.train.batch_size}
    if args.reuse and (folder / data_mod.COMPLETE).is_file():
        report["build"] = json.loads((folder / "build.json").read_text())
    else:
        report["build"] = build_tiled_cache(cfg, folder, args.sequences)
        (folder / "build.json").write_text(json.dumps(report["build"]))
    print(f"cache: {report['build']['frames']} frames, {report['build']['array_bytes'] / 1e9:.2f} GB of arrays "
          f"(what read_arrays would hold in RAM per process); reading one sequence "
          f"{report['build']['read_s_per_sequence']:.2f} s", flush=True)
    anon_before = rss_now_mb("RssAnon")
    train = data_mod.open_mapped(folder, cfg.model.modalities)
    report["anon_open_mb"] = rss_now_mb("RssAnon") - anon_before
    report["data_epoch_s"] = float("nan") if args.no_data_epoch else data_epoch_seconds(train, cfg.train.batch_size)
    report["anon_after_data_epoch_mb"] = rss_now_mb("RssAnon")
    report["file_after_data_epoch_mb"] = rss_now_mb("RssFile")
    print(f"opened mapped: +{report['anon_open_mb']:.0f} MB of process memory; one data-only epoch (every row, "
          f"shuffled batches of {cfg.train.batch_size}): {report['data_epoch_s']:.1f} s; then process memory "
          f"{report['anon_after_data_epoch_mb']:.0f} MB (RssAnon) + {report['file_after_data_epoch_mb']:.0f} MB "
          f"of mapped file pages (page cache, reclaimable)", flush=True)
    if args.batch:
        cfg.train.batch_size = args.batch
    if args.fisher_samples:
        cfg.balance.awc.fisher_samples = args.fisher_samples
        cfg.balance.awc.fisher_chunk = min(cfg.balance.awc.fisher_chunk, args.fisher_samples)
    if args.fisher_chunk:
        cfg.balance.awc.fisher_chunk = args.fisher_chunk
    steps = args.steps
    cfg.data.max_train = steps * cfg.train.batch_size
    cfg.data.max_val = 64
    cfg.data.validation = "test"   # time exactly `steps` steps: no recordings held out of them
    cfg.out = str(Path(args.cache) / "run")
    sub = train.take(data_mod.evenly_spaced(len(train), cfg.data.max_train))
    test = train.take(data_mod.evenly_spaced(len(train), 64))
    dist = distributed.setup(args.device)
    trainer = Trainer(cfg, sub, test, dist, progress=False)
    t0 = time.perf_counter()
    rec = trainer.train_epoch(0)
    wall = time.perf_counter() - t0
    times = dict(rec["time"])
    fisher = times.get("fisher", 0.0)
    step_s = (times.get("train", wall) - fisher) / steps
    steps_per_epoch = math.ceil(report["build"]["frames"] / cfg.train.batch_size)
    report.update(steps_measured=steps, step_s=step_s, fisher_s=fisher, times=times, train_batch=cfg.train.batch_size,
                  fisher_samples=cfg.balance.awc.fisher_samples, steps_per_epoch=steps_per_epoch,
                  epoch_s_extrapolated=steps_per_epoch * step_s + fisher, rss_peak_mb=rss_peak_mb(),
                  anon_end_mb=rss_now_mb("RssAnon"))
    print(f"{args.preset} on {args.device} ({args.threads} threads), batch {cfg.train.batch_size}: {step_s:.2f} s/step "
          f"over {steps} steps, Fisher pass over {cfg.balance.awc.fisher_samples} samples {fisher:.1f} s; "
          f"{steps_per_epoch} steps/epoch -> ~{report['epoch_s_extrapolated'] / 3600:.2f} h per epoch (extrapolated); "
          f"peak RSS {report['rss_peak_mb']:.0f} MB (mapped file pages included), process memory at the end "
          f"{report['anon_end_mb']:.0f} MB", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=float))
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
