"""Named dataset sizes: which subjects and actions a generated dataset holds.

Every sequence always has ``schema.FRAMES_PER_SEQUENCE`` (297) frames; a small dataset has fewer
subjects and actions, never shorter sequences.

The subjects of each preset are chosen so that, with seed 0,

* protocol P1, split S1 (official per-action ``np.random.seed(k)`` permutation) has at least one
  train and one test subject for every action of the preset,
* split S2 (test S05, S10, ...) and split S3 (test E04 = S31-S40) both have a test subject.

``check_preset`` verifies this; the tests run it on every preset.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sensors.core import schema

S1_TRAIN_SUBJECTS = 32  # the official toolbox's floor(0.8 * 40)


@dataclass(frozen=True)
class Preset:
    """A dataset size: subjects x actions, each a full 297-frame sequence."""

    name: str
    subjects: tuple[str, ...]
    actions: tuple[str, ...]
    description: str

    def __post_init__(self) -> None:
        bad_s = [s for s in self.subjects if s not in schema.SUBJECTS]
        bad_a = [a for a in self.actions if a not in schema.ACTIONS]
        if bad_s or bad_a or not self.subjects or not self.actions:
            raise ValueError(f"preset {self.name!r}: expected subjects in S01..S40 and actions in A01..A27, "
                             f"got unknown subjects {bad_s} / actions {bad_a} (or an empty list)")

    @property
    def n_sequences(self) -> int:
        return len(self.subjects) * len(self.actions)


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        "tiny", ("S02", "S10", "S32"), ("A02", "A03", "A04"),
        "3 subjects (E01, E01, E04) x 3 P1 actions: for the test suite"),
    "small": Preset(
        "small", ("S01", "S02", "S05", "S10", "S13", "S22", "S31", "S36"),
        ("A02", "A03", "A04", "A13", "A17", "A22"),
        "8 subjects over all four environments x 6 P1 actions: for the demo"),
    "bench": Preset(
        "bench",
        ("S01", "S02", "S04", "S05", "S10", "S12", "S15", "S17", "S20", "S21", "S24", "S26",
         "S30", "S31", "S34", "S36"),
        schema.PROTOCOLS["P1"],
        "16 subjects, four per environment, x the 14 P1 actions: for the study"),
}


def s1_test_subjects(k: int, seed: int = 0) -> set[str]:
    """Official MM-Fi S1 rule: test subjects of the k-th protocol action (``perm[32:]``)."""
    perm = np.random.RandomState(seed + k).permutation(len(schema.SUBJECTS))
    return {schema.SUBJECTS[i] for i in perm[S1_TRAIN_SUBJECTS:]}


def check_preset(preset: Preset, protocol: str = "P1", seed: int = 0) -> list[str]:
    """Problems that would leave a split of ``preset`` without train or test data ([] = fine)."""
    problems = []
    actions = schema.PROTOCOLS[protocol]
    subjects = set(preset.subjects)
    for action in preset.actions:
        if action not in actions:
            continue
        test = s1_test_subjects(actions.index(action), seed) & subjects
        if not test or test == subjects:
            problems.append(f"{protocol}/S1 {action}: test {sorted(test)} of {sorted(subjects)}")
    if not any(int(s[1:]) % 5 == 0 for s in subjects) or all(int(s[1:]) % 5 == 0 for s in subjects):
        problems.append("S2 needs subjects both in and out of S05, S10, ..., S40")
    envs = {schema.environment_of(s) for s in subjects}
    if schema.ENVIRONMENTS[-1] not in envs or envs == {schema.ENVIRONMENTS[-1]}:
        problems.append("S3 needs subjects both in E04 and in E01-E03")
    return problems


def resolve(preset: str, subjects=None, actions=None) -> Preset:
    """The preset named ``preset``, optionally narrowed/overridden to ``subjects``/``actions``."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: expected one of {', '.join(PRESETS)}")
    base = PRESETS[preset]
    if subjects is None and actions is None:
        return base
    return Preset(base.name,
                  tuple(subjects) if subjects is not None else base.subjects,
                  tuple(actions) if actions is not None else base.actions,
                  base.description + " (overridden)")
