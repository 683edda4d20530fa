"""Exercise models of MM-Fi's rehabilitation protocol P2: which angle each exercise works, on
which side, and how repetitions of it are counted.

``mode`` says how the principal angle (``runtime.rehab.angles`` names) is read:

* ``left`` / ``right``: one side's angle (the working limb); the other side is reported beside it;
* ``both``: both limbs move together; repetitions are counted on the mean of the two sides, and
  the range of motion of each side gives the left/right symmetry;
* ``alternating``: the sides take turns (mark time); each side is counted on its own and the
  session count is the sum;
* ``none``: a trunk angle (no side).

``mirror`` names the same exercise on the other side (A07/A08, A09/A10, A15/A16, A24/A25): a
session holding both gives the left/right symmetry of a one-sided exercise.
``min_rom_deg`` is the smallest range of motion that counts as a repetition (about a third of the
range a healthy adult moves through); it is the same for every subject and never tuned per person.
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.rehab.angles import ANGLE_NAMES, LIMB_ANGLES
from sensors.core import schema

MODES = ("left", "right", "both", "alternating", "none")
UNKNOWN = "unknown"


@dataclass(frozen=True)
class Exercise:
    code: str                      # MM-Fi action code, or "unknown"
    name: str
    angle: str                     # principal angle (runtime.rehab.angles.ANGLE_NAMES)
    mode: str                      # see the module doc
    motion: str                    # the expected movement, for the report
    min_rom_deg: float = 20.0      # smallest range of motion counted as a repetition
    secondary: tuple[str, ...] = ()   # other angles shown in the report
    mirror: str | None = None

    def __post_init__(self):
        if self.angle not in ANGLE_NAMES or any(a not in ANGLE_NAMES for a in self.secondary):
            raise ValueError(f"exercise {self.code}: angles must be among {ANGLE_NAMES}, got {self.angle!r} "
                             f"and {self.secondary}")
        if self.mode not in MODES:
            raise ValueError(f"exercise {self.code}: mode must be one of {MODES}, got {self.mode!r}")
        if (self.mode == "none") == (self.angle in LIMB_ANGLES):
            raise ValueError(f"exercise {self.code}: mode 'none' goes with a trunk angle and only with one")

    @property
    def sides(self) -> tuple[str, ...]:
        """Sides whose principal angle is counted or compared."""
        return {"left": ("left",), "right": ("right",), "none": ("none",)}.get(self.mode, ("left", "right"))


def _ex(code, angle, mode, motion, min_rom, secondary=(), mirror=None) -> Exercise:
    return Exercise(code, schema.ACTION_NAMES[code], angle, mode, motion, min_rom, tuple(secondary), mirror)


EXERCISES: dict[str, Exercise] = {e.code: e for e in (
    _ex("A01", "shoulder_abduction", "both", "both arms raised overhead and lowered", 45.0,
        ("shoulder_flexion", "elbow_flexion", "trunk_lean_sagittal")),
    _ex("A06", "knee_flexion", "alternating", "knees lifted in turn, marching on the spot", 30.0,
        ("hip_flexion", "shoulder_flexion")),
    _ex("A07", "shoulder_abduction", "left", "left arm and leg raised out to the side", 40.0,
        ("hip_abduction", "trunk_lean_frontal"), "A08"),
    _ex("A08", "shoulder_abduction", "right", "right arm and leg raised out to the side", 40.0,
        ("hip_abduction", "trunk_lean_frontal"), "A07"),
    _ex("A09", "knee_flexion", "left", "forward lunge on the left leg and back", 25.0,
        ("hip_flexion", "trunk_lean_sagittal"), "A10"),
    _ex("A10", "knee_flexion", "right", "forward lunge on the right leg and back", 25.0,
        ("hip_flexion", "trunk_lean_sagittal"), "A09"),
    _ex("A11", "shoulder_abduction", "both", "both arms raised out to the side and overhead", 45.0,
        ("hip_abduction",)),
    _ex("A12", "knee_flexion", "both", "squat down and stand up", 35.0,
        ("hip_flexion", "trunk_lean_sagittal")),
    _ex("A15", "knee_flexion", "left", "side lunge to the left and back", 20.0,
        ("hip_abduction", "trunk_lean_frontal"), "A16"),
    _ex("A16", "knee_flexion", "right", "side lunge to the right and back", 20.0,
        ("hip_abduction", "trunk_lean_frontal"), "A15"),
    _ex("A24", "shoulder_abduction", "right", "right arm overhead, trunk bending to the left", 45.0,
        ("trunk_lean_frontal",), "A25"),
    _ex("A25", "shoulder_abduction", "left", "left arm overhead, trunk bending to the right", 45.0,
        ("trunk_lean_frontal",), "A24"),
    _ex("A26", "shoulder_flexion", "both", "jumps with a forward arm swing (counted on the swing)", 35.0,
        ("knee_flexion", "hip_flexion")),
)}

# "unknown exercise": every angle is watched with generic repetitions; the report shows the angle
# that moved the most.
GENERIC_MIN_ROM_DEG = 20.0


def get_exercise(code: str | None) -> Exercise | None:
    """The model of ``code`` (A01..), or None for an unknown or empty code (generic mode)."""
    if not code:
        return None
    return EXERCISES.get(str(code).strip().upper())
