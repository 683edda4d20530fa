"""Per-environment placement of the sensors and the room (E01-E04).

MM-Fi publishes no extrinsics; these are the reported mountings (camera ~0.9 m above the floor,
LiDAR ~0.2 m above and ~0.1 m closer than the camera, radar beside them, WiFi Tx/Rx on either side
of the subject) with a small difference per room. The standing area is where the real ground truth
puts the subjects (pelvis 3.0-3.4 m from the camera, about +-0.3 m sideways); a sequence's spot is
drawn inside it (``body.place``). Every number is a named setting a user with the real data can
correct.

Frames: the camera frame is x right, y down, z depth (the ground truth's frame). The floor is the
plane y = +camera_height_m.
"""

from __future__ import annotations

from dataclasses import dataclass

from sensors.core import schema


@dataclass(frozen=True)
class Environment:
    """One room: sensor placement (camera-frame metres) and the room's static channel."""

    name: str
    camera_height_m: float = 0.86          # floor at y = +camera_height_m in the camera frame
    subject_depth_m: tuple[float, float] = (3.05, 3.38)  # standing area: pelvis z, drawn per sequence
    subject_x_m: tuple[float, float] = (-0.25, 0.22)     # standing area: pelvis x, drawn per sequence
    lidar_offset_m: tuple[float, float, float] = (0.0, -0.2, 0.1)  # LiDAR origin in the camera frame
    radar_offset_m: tuple[float, float, float] = (0.25, -0.05, 0.05)  # radar origin in the camera frame
    back_wall_m: float | None = 5.0        # depth of the wall behind the subject (None = open room)
    side_walls_m: float | None = None      # |x| of side walls seen by the LiDAR (None = none in view)
    wifi_tx_m: tuple[float, float, float] = (-1.4, 0.0, 3.2)  # WiFi transmitter, camera frame
    wifi_rx_m: tuple[float, float, float] = (1.4, 0.0, 3.2)   # WiFi receiver (3 antennas along z)
    wifi_paths: int = 9                    # static multipath components (6-12)
    wifi_delay_ns: tuple[float, float] = (10.0, 80.0)  # delays of the static paths
    wifi_level_db: float = 40.1            # mean CSI amplitude (dB-like), from the real E0x profile
    wifi_edge_drop_db: tuple[float, float] = (6.5, 2.0)  # roll-off at the low/high band edges
    wifi_seed: int = 1                     # seed of this room's static paths

    def __post_init__(self) -> None:
        if self.name not in schema.ENVIRONMENTS:
            raise ValueError(f"environment name must be one of {schema.ENVIRONMENTS}, got {self.name!r}")
        lo, hi = self.subject_depth_m
        if not 2.0 < lo <= hi < 5.0:
            raise ValueError(f"{self.name}: subject_depth_m must be an increasing range within 2-5 m, "
                             f"got {self.subject_depth_m}")
        if self.back_wall_m is not None and self.back_wall_m <= hi + 0.5:
            raise ValueError(f"{self.name}: back_wall_m must be > {hi + 0.5} m (behind the subject), "
                             f"got {self.back_wall_m}")
        if not 6 <= self.wifi_paths <= 16:
            raise ValueError(f"{self.name}: wifi_paths must be 6-16, got {self.wifi_paths}")


# Mean CSI levels and edge roll-offs fitted to the real per-subcarrier profiles of E01-E03
# (derived_csi_stats/E0x_profile.csv: mean 39.6 / 40.4 / 40.3 dB; first subcarrier 7.1 / 5.1 /
# 4.9 dB and last 1.6-2.7 dB below the mean of the band centre). E04 has no published profile: it
# takes the average.
ENVIRONMENTS: dict[str, Environment] = {
    "E01": Environment("E01", camera_height_m=0.86, back_wall_m=4.8, wifi_level_db=39.6,
                       wifi_edge_drop_db=(7.0, 2.5), wifi_paths=9, wifi_seed=101),
    "E02": Environment("E02", camera_height_m=0.90, back_wall_m=5.5, side_walls_m=1.6,
                       wifi_level_db=40.4, wifi_edge_drop_db=(5.0, 2.5), wifi_paths=11, wifi_seed=202,
                       wifi_tx_m=(-1.6, -0.2, 3.0), wifi_rx_m=(1.5, 0.0, 3.4)),
    "E03": Environment("E03", camera_height_m=0.88, back_wall_m=6.5, wifi_level_db=40.3,
                       wifi_edge_drop_db=(5.0, 2.5), wifi_paths=7, wifi_seed=303,
                       wifi_tx_m=(-1.2, 0.1, 3.4), wifi_rx_m=(1.3, -0.1, 3.1)),
    "E04": Environment("E04", camera_height_m=0.92, back_wall_m=4.6, side_walls_m=1.8,
                       wifi_level_db=40.1, wifi_edge_drop_db=(5.7, 2.3), wifi_paths=12, wifi_seed=404,
                       subject_depth_m=(3.08, 3.40)),
}


def get_environment(name: str) -> Environment:
    """The settings of environment ``name`` (E01..E04)."""
    if name not in ENVIRONMENTS:
        raise ValueError(f"unknown environment {name!r}: expected one of {', '.join(ENVIRONMENTS)}")
    return ENVIRONMENTS[name]
