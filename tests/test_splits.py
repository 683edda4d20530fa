"""MM-Fi protocols and splits: action lists, the official S1 seeding, S2/S3 subject sets."""

from __future__ import annotations

import numpy as np
import pytest

from sensors import splits
from sensors.core import schema

# P1, seed 0: test subjects of each action, computed once with the official toolbox's code path
# (np.random.seed(rs); idx = np.random.permutation(40); rs += 1 per action; idx[32:] is test).
P1_SEED0_TEST = {
    "A02": "S01 S04 S07 S10 S20 S22 S24 S39",
    "A03": "S01 S06 S09 S10 S12 S13 S16 S38",
    "A04": "S08 S09 S12 S16 S19 S23 S32 S36",
    "A05": "S01 S04 S09 S11 S20 S22 S25 S34",
    "A13": "S01 S02 S04 S06 S09 S10 S24 S31",
    "A14": "S09 S10 S15 S17 S28 S31 S36 S38",
    "A17": "S02 S10 S11 S16 S17 S21 S26 S36",
    "A18": "S04 S05 S15 S20 S24 S26 S29 S36",
    "A19": "S04 S06 S09 S11 S20 S21 S22 S27",
    "A20": "S02 S23 S28 S29 S30 S34 S39 S40",
    "A21": "S01 S10 S16 S26 S29 S30 S34 S37",
    "A22": "S08 S13 S14 S17 S18 S26 S28 S34",
    "A23": "S03 S04 S07 S12 S13 S23 S28 S36",
    "A27": "S03 S11 S14 S17 S19 S26 S27 S35",
}


def _by_action(pairs):
    out: dict[str, set[str]] = {}
    for subject, action in pairs:
        out.setdefault(action, set()).add(subject)
    return out


def test_protocol_action_lists():
    p1, p2, p3 = (set(schema.PROTOCOLS[p]) for p in ("P1", "P2", "P3"))
    assert (len(schema.PROTOCOLS["P1"]), len(schema.PROTOCOLS["P2"]), len(schema.PROTOCOLS["P3"])) == (14, 13, 27)
    assert not p1 & p2
    assert p1 | p2 == p3 == set(schema.ACTIONS)
    assert splits.check_protocol("P2") == schema.PROTOCOLS["P2"]


def test_s1_reproduces_official_seeding_table():
    test = _by_action(splits.split_pairs("P1", "S1", seed=0)["test"])
    assert list(P1_SEED0_TEST) == list(schema.PROTOCOLS["P1"])
    assert {a: " ".join(sorted(s)) for a, s in test.items()} == P1_SEED0_TEST


@pytest.mark.parametrize("seed", [0, 7, 1234])
def test_s1_randomstate_agrees_with_global_seeding(seed):
    """The official code seeds the global generator; we use RandomState: same permutations."""
    saved = np.random.get_state()
    try:
        for k in range(27):
            np.random.seed(seed + k)
            official = [schema.SUBJECTS[i] for i in np.random.permutation(40)[32:]]
            assert splits.s1_test_subjects(k, seed) == official
    finally:
        np.random.set_state(saved)


def test_split_leaves_global_random_state_alone():
    np.random.seed(99)
    before = np.random.get_state()[1].copy()
    splits.split_pairs("P3", "S1", seed=5)
    after = np.random.get_state()
    assert np.array_equal(before, after[1])
    np.random.seed(99)
    expected = np.random.rand()
    np.random.seed(99)
    splits.split_pairs("P1", "S1")
    assert np.random.rand() == expected


@pytest.mark.parametrize("protocol", ["P1", "P2", "P3"])
@pytest.mark.parametrize("split", ["S1", "S2", "S3"])
def test_every_action_covers_all_subjects_once(protocol, split):
    pairs = splits.split_pairs(protocol, split)
    train, test = _by_action(pairs["train"]), _by_action(pairs["test"])
    assert set(train) == set(test) == set(schema.PROTOCOLS[protocol])
    for action in schema.PROTOCOLS[protocol]:
        assert not train[action] & test[action]
        assert train[action] | test[action] == set(schema.SUBJECTS)
        assert (len(train[action]), len(test[action])) == ((32, 8) if split != "S3" else (30, 10))


def test_s1_depends_on_seed_and_action():
    a = _by_action(splits.split_pairs("P1", "S1", seed=0)["test"])
    b = _by_action(splits.split_pairs("P1", "S1", seed=1)["test"])
    assert a != b
    assert b["A02"] == a["A03"]  # seed + k: action k with seed 1 is action k+1 with seed 0
    assert len({frozenset(s) for s in a.values()}) > 1


def test_s2_cross_subject():
    test = _by_action(splits.split_pairs("P2", "S2")["test"])
    expected = {f"S{i:02d}" for i in range(5, 41, 5)}
    assert expected == {"S05", "S10", "S15", "S20", "S25", "S30", "S35", "S40"}
    assert all(s == expected for s in test.values())


def test_s3_cross_environment():
    pairs = splits.split_pairs("P3", "S3")
    train_subjects = {s for s, _ in pairs["train"]}
    test_subjects = {s for s, _ in pairs["test"]}
    assert train_subjects == {f"S{i:02d}" for i in range(1, 31)}
    assert test_subjects == {f"S{i:02d}" for i in range(31, 41)}
    assert {schema.environment_of(s) for s in test_subjects} == {"E04"}


def test_subset_all_is_union():
    pairs = splits.split_pairs("P1", "S1")
    assert splits.subset_pairs("P1", "S1", "all") == set(pairs["train"]) | set(pairs["test"])
    assert splits.subset_pairs("P1", "S1", "test") == set(pairs["test"])


@pytest.mark.parametrize("call, match", [
    (lambda: splits.split_pairs("P4", "S1"), "P1, P2, P3"),
    (lambda: splits.split_pairs("P1", "random"), "S1, S2, S3"),
    (lambda: splits.subset_pairs("P1", "S1", "val"), "train, test, all"),
])
def test_bad_names_say_what_is_expected(call, match):
    with pytest.raises(ValueError, match=match):
        call()
