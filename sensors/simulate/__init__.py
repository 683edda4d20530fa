"""Synthetic MM-Fi: write a dataset in MM-Fi's exact layout and file formats.

    from sensors.simulate import simulate
    report = simulate("data/mmfi-small", preset="small", seed=0, workers=2)

Each sequence (subject x action) is generated from its own seed,
``np.random.SeedSequence([seed, env, subject, action])`` (numbers, e.g. 1, 5, 2 for E01/S05/A02),
so a dataset is the same for a seed whatever the number of workers. A subject's body (bone lengths,
tempo, range of motion) comes from ``[seed, env, subject, 0]`` and stays the same across its actions;
everything of the recording (standing spot, facing, the WiFi channel state, the radar's extrinsic
and clutter) is drawn per sequence, as each MM-Fi sequence was a capture of its own.

Stages: kinematics (ground truth) -> rgb / lidar / mmwave / wifi sensor models -> writer.
"""

from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from sensors.core import schema
from sensors.simulate import kinematics, lidar, mmwave, rgb, truth, wifi
from sensors.simulate.body import BodyConfig, make_subject, place
from sensors.simulate.environment import get_environment
from sensors.simulate.presets import PRESETS, resolve
from sensors.simulate.writer import SequenceData, sequence_dir, write_sequence

__all__ = ["GeneratorConfig", "generate_sequence", "simulate", "PRESETS"]


@dataclass(frozen=True)
class GeneratorConfig:
    """Every sensor-model setting of the generator (defaults = the calibrated values)."""

    body: BodyConfig = field(default_factory=BodyConfig)
    rgb: rgb.RgbConfig = field(default_factory=rgb.RgbConfig)
    lidar: lidar.LidarConfig = field(default_factory=lidar.LidarConfig)
    mmwave: mmwave.MmwaveConfig = field(default_factory=mmwave.MmwaveConfig)
    wifi: wifi.WifiConfig = field(default_factory=wifi.WifiConfig)


def _number(name: str) -> int:
    return int(name[1:])


def sequence_seed(seed: int, subject: str, action: str) -> np.random.SeedSequence:
    env = schema.environment_of(subject)
    return np.random.SeedSequence([seed, _number(env), _number(subject), _number(action)])


def generate_sequence(subject: str, action: str, seed: int = 0,
                      config: GeneratorConfig = GeneratorConfig()) -> SequenceData:
    """One sequence in memory (pure: no I/O)."""
    if action not in schema.ACTIONS:
        raise ValueError(f"unknown action {action!r}: expected A01..A27")
    env = get_environment(schema.environment_of(subject))
    body_ss = np.random.SeedSequence([seed, _number(env.name), _number(subject), 0])
    body = make_subject(subject, np.random.default_rng(body_ss), env, config.body)   # per subject
    kin, r_rgb, r_lidar, r_mmwave, r_wifi, r_place, r_session = (
        np.random.default_rng(s) for s in sequence_seed(seed, subject, action).spawn(7))
    person = place(body, r_place, env, config.body)                   # per sequence
    wifi_session = wifi.session(r_session, env, config.wifi)          # per sequence
    channels = kinematics.action_channels(action, schema.FRAMES_PER_SEQUENCE, person, kin)
    joints = kinematics.forward_kinematics(channels, person, env.camera_height_m)
    amp, phase = wifi.sequence(joints, env, r_wifi, config.wifi, wifi_session)
    return SequenceData(
        ground_truth=joints.astype(np.float32),
        rgb=rgb.keypoints(joints, r_rgb, config.rgb),
        lidar=lidar.sequence(joints, env, r_lidar, config.lidar),
        mmwave=mmwave.sequence(joints, env, r_mmwave, config.mmwave),
        csi_amp=amp, csi_phase=phase, rehab_truth=truth.truth_of(action, channels),
    )


def _job(args: tuple[str, str, str, int, GeneratorConfig]) -> int:
    root, subject, action, seed, config = args
    data = generate_sequence(subject, action, seed, config)
    return write_sequence(sequence_dir(Path(root), subject, action), data)


def simulate(out, preset: str = "tiny", seed: int = 0, subjects=None, actions=None, workers: int = 1,
             progress: bool = True, config: GeneratorConfig | None = None) -> dict:
    """Generate a dataset under ``out`` in MM-Fi layout; returns a report (what, how many, how long).

    subjects / actions: override the preset's lists (e.g. ["S01", "S05"], ["A02"]).
    workers: processes; the output is byte-identical for any value.
    """
    chosen = resolve(preset, subjects, actions)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    config = config or GeneratorConfig()
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    jobs = [(str(root), s, a, int(seed), config) for s in chosen.subjects for a in chosen.actions]
    start = time.perf_counter()
    bar = tqdm(total=len(jobs), desc=f"simulate {chosen.name}", unit="seq", disable=not progress)
    if workers == 1:
        sizes = []
        for job in jobs:
            sizes.append(_job(job))
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            sizes = []
            for size in pool.map(_job, jobs):
                sizes.append(size)
                bar.update()
    bar.close()
    return {
        "root": str(root), "preset": chosen.name, "seed": int(seed),
        "subjects": list(chosen.subjects), "actions": list(chosen.actions),
        "environments": sorted({schema.environment_of(s) for s in chosen.subjects}),
        "sequences": len(jobs), "frames": len(jobs) * schema.FRAMES_PER_SEQUENCE,
        "bytes": int(sum(sizes)), "seconds": round(time.perf_counter() - start, 2),
    }
