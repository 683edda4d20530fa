"""MM-Fi protocols (which actions) and splits (which subjects train and which test).

The action lists of the protocols live in ``schema.PROTOCOLS``:

* P1 daily actions (14), P2 rehabilitation actions (13), P3 all 27.

Splits, over all 40 subjects S01..S40:

* S1 random: for the k-th action of the protocol (k from 0), the official MM-Fi toolbox does
  ``np.random.seed(seed + k); perm = np.random.permutation(40)`` and puts subjects ``perm[:32]``
  (0-based, so 0 -> S01) in train and ``perm[32:]`` in test. Each action has its own 32/8 subject
  split. ``np.random.RandomState(seed + k).permutation(40)`` gives the same permutation without
  touching numpy's global random state, which is what we use.
* S2 cross-subject: test S05, S10, ..., S40 (every 5th subject), train the other 32.
* S3 cross-environment: train S01-S30 (E01-E03), test S31-S40 (E04).
"""

from __future__ import annotations

import numpy as np

from sensors.core import schema

SUBSETS: tuple[str, ...] = ("train", "test", "all")
S1_TRAIN_SUBJECTS = 32  # floor(0.8 * 40), the official toolbox's ratio
S2_TEST_EVERY = 5

Pair = tuple[str, str]  # (subject, action)


def check_protocol(protocol: str) -> tuple[str, ...]:
    """The action list of ``protocol``; a ValueError naming the choices otherwise."""
    if protocol not in schema.PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}: expected one of {', '.join(schema.PROTOCOLS)} "
                         "(P1 daily, P2 rehabilitation, P3 all actions)")
    return schema.PROTOCOLS[protocol]


def check_split(split: str) -> str:
    if split not in schema.SPLITS:
        raise ValueError(f"unknown split {split!r}: expected one of {', '.join(schema.SPLITS)} "
                         "(S1 random, S2 cross-subject, S3 cross-environment)")
    return split


def s1_test_subjects(k: int, seed: int = 0) -> list[str]:
    """S1 test subjects of the k-th action of a protocol: ``perm[32:]`` of permutation(40) seeded
    with ``seed + k``, as subject names in the permutation's order."""
    perm = np.random.RandomState(seed + k).permutation(len(schema.SUBJECTS))
    return [schema.SUBJECTS[i] for i in perm[S1_TRAIN_SUBJECTS:]]


def held_out_subjects(split: str, k: int = 0, seed: int = 0) -> set[str]:
    """Test subjects of ``split`` for the k-th action of the protocol (k matters only for S1)."""
    check_split(split)
    if split == "S1":
        return set(s1_test_subjects(k, seed))
    if split == "S2":
        return {s for i, s in enumerate(schema.SUBJECTS, start=1) if i % S2_TEST_EVERY == 0}
    return {s for s in schema.SUBJECTS if schema.environment_of(s) == schema.ENVIRONMENTS[-1]}


def split_pairs(protocol: str, split: str, seed: int = 0) -> dict[str, list[Pair]]:
    """{"train": [(subject, action), ...], "test": [...]} over all 40 subjects, sorted by
    (subject, action). Bit-exact with the official MM-Fi toolbox for S1."""
    actions = check_protocol(protocol)
    out: dict[str, list[Pair]] = {"train": [], "test": []}
    for k, action in enumerate(actions):
        test = held_out_subjects(split, k, seed)
        for subject in schema.SUBJECTS:
            out["test" if subject in test else "train"].append((subject, action))
    return {name: sorted(pairs) for name, pairs in out.items()}


def subset_pairs(protocol: str, split: str, subset: str, seed: int = 0) -> set[Pair]:
    """The (subject, action) pairs of one subset: "train", "test" or "all" (both)."""
    if subset not in SUBSETS:
        raise ValueError(f"unknown subset {subset!r}: expected one of {', '.join(SUBSETS)}")
    pairs = split_pairs(protocol, split, seed)
    if subset == "all":
        return set(pairs["train"]) | set(pairs["test"])
    return set(pairs[subset])
