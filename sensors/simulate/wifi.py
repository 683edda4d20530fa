"""WiFi CSI (Atheros CSI tool, 5 GHz, 40 MHz, 1 Tx x 3 Rx, 114 subcarriers, 100 packets/s).

MM-Fi's ``wifi-csi/frameNNN.mat`` (MATLAB 5) holds ``CSIamp`` (dB-like, ~29-49) and ``CSIphase``
(radians in [-pi, pi]), float64 (3, 114, 10): 10 packets per 100 ms frame.

The channel of antenna a at subcarrier frequency f is

    H_a(f) = sum_p g_p exp(-j 2 pi f tau_p) exp(-j pi a sin(theta_p))          static paths
           + sum_i rho_i / (d_tx,i d_i,a) exp(-j 2 pi f (d_tx,i + d_i,a) / c)   body reflections

with a per-room set of 6-12 static paths (delays 10-80 ns, the first the direct path), and body
reflections from scatterers on the joints and bone midpoints (interpolated to each packet time),
10-20 dB below the direct path in total; the body also shadows the paths it stands near. Each
sequence is a capture of its own (``session``): the routers' placement error, the changed
scattered paths (people, doors, furniture), the direct path's, each antenna's and the receiver's
gain. Hardware: complex CSI estimation noise (what sets a real frame's ~0.25 dB per-value scatter
and the floor of a fade), per-(antenna, packet) gain jitter, a random common phase and a small
linear phase slope per packet (sampling time offset), a constant per-antenna phase offset. Amplitude = 20 log10|H| + band-edge roll-off + a room level, so the mean matches the
real per-subcarrier profiles. Rare packets carry -inf amplitude / NaN values so the official
repair path runs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from sensors.core import schema

SPEED_OF_LIGHT = 299_792_458.0
J = schema.JOINT_INDEX


@dataclass(frozen=True)
class WifiConfig:
    centre_hz: float = 5.32e9
    spacing_hz: float = 312.5e3
    los_k_db: float = 14.0                # direct path power over the scattered static paths
    path_decay_ns: float = 25.0           # exponential power-delay decay of the static paths
    body_rel_db: float = -15.0            # total body reflection power relative to the direct path
    session_path_sigma: float = 0.5       # per-sequence relative change of the scattered static paths
    antenna_jitter_m: float = 0.03        # per-sequence placement error of the Tx / Rx (each axis)
    direct_gain_sigma_db: float = 1.0     # per-sequence direct-path gain (antenna orientation)
    sequence_gain_sigma_db: float = 3.0   # per-sequence receiver (AGC) gain
    antenna_gain_sigma_db: float = 1.0    # per-sequence, per-antenna gain
    packet_gain_sigma_db: float = 1.3     # per (antenna, packet) gain jitter (real frame: ~1.3 dB)
    csi_snr_db: float = 28.0              # CSI estimation SNR (real frame: ~0.25 dB residual scatter)
    edge_width_sc: float = 8.0            # e-folding width (subcarriers) of the band-edge roll-off
    shadow_db: float = 8.0                # attenuation of a fully blocked path (saturating)
    shadow_width_m: float = 0.12          # ~ first Fresnel zone radius (5 GHz, ~1.5 m legs)
    phase_slope_sigma: float = 0.02       # rad per subcarrier, per packet
    phase_noise_sigma: float = 0.03       # rad, per (antenna, packet)
    nonfinite_frame_rate: float = 0.01    # frames with a corrupted packet
    lost_packet_share: float = 0.3        # of those, the whole packet NaN (else a few -inf values)

    def __post_init__(self) -> None:
        if not -30.0 <= self.body_rel_db <= -5.0:
            raise ValueError(f"body_rel_db should be -30..-5 dB (real: 10-20 dB below the direct path), "
                             f"got {self.body_rel_db}")
        if not 0 <= self.nonfinite_frame_rate < 0.5:
            raise ValueError(f"nonfinite_frame_rate must be in [0, 0.5), got {self.nonfinite_frame_rate}")
        if not 10.0 <= self.csi_snr_db <= 60.0:
            raise ValueError(f"csi_snr_db should be 10-60 dB (real frame: ~28 dB), got {self.csi_snr_db}")
        if not 0 <= self.antenna_jitter_m < 0.5 or not 0 <= self.session_path_sigma < 2:
            raise ValueError("antenna_jitter_m must be in [0, 0.5) m and session_path_sigma in [0, 2), "
                             f"got {self.antenna_jitter_m}, {self.session_path_sigma}")


@dataclass(frozen=True)
class Session:
    """One recording's channel state: where the routers stood, how the room's scattered paths had
    changed, the direct path's and each antenna's gain. Drawn per sequence (``session``)."""

    tx_m: np.ndarray              # [3] transmitter, camera frame
    rx_m: np.ndarray              # [3] receiver (first antenna), camera frame
    path_factor: np.ndarray       # [P] complex multiplier of each static path (direct path: real)
    path_shift_m: np.ndarray      # [P] change of each static path's length (m)
    antenna_db: np.ndarray        # [3] per-antenna gain
    gain_db: float                # receiver gain offset of the capture


def subcarrier_hz(cfg: WifiConfig) -> np.ndarray:
    """[114] frequencies: indices -58..-2 and 2..58 around the centre."""
    idx = np.concatenate([np.arange(-58, -1), np.arange(2, 59)])
    return cfg.centre_hz + idx * cfg.spacing_hz


def rx_antennas(env, cfg: WifiConfig) -> np.ndarray:
    """[3,3] receive antenna positions (camera frame, m): half a wavelength apart along z."""
    half_lambda = SPEED_OF_LIGHT / cfg.centre_hz / 2
    return np.asarray(env.wifi_rx_m) + np.arange(schema.WIFI_ANTENNAS)[:, None] * np.array([0, 0, half_lambda])


def static_paths(env, cfg: WifiConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The room's static paths: complex gains [P], delays [P] (s), arrival angles [P] (rad) and
    bounce points [P,3] (camera frame, m; the direct path's is the midpoint of Tx and Rx)."""
    rng = np.random.default_rng(env.wifi_seed)
    tx, rx = np.asarray(env.wifi_tx_m), np.asarray(env.wifi_rx_m)
    direct = np.linalg.norm(tx - rx) / SPEED_OF_LIGHT
    lo, hi = env.wifi_delay_ns
    tau = np.concatenate([[direct], np.sort(rng.uniform(max(lo * 1e-9, direct), hi * 1e-9, env.wifi_paths - 1))])
    power = np.exp(-(tau - direct) / (cfg.path_decay_ns * 1e-9))
    power[1:] *= 10 ** (-cfg.los_k_db / 10) / power[1:].sum()
    gain = np.sqrt(power) * np.exp(1j * rng.uniform(0, 2 * np.pi, tau.size))
    theta = rng.uniform(-np.pi / 2, np.pi / 2, tau.size)
    return gain, tau, theta, _bounce_points(tx, rx, tau * SPEED_OF_LIGHT, rng)


def _bounce_points(tx: np.ndarray, rx: np.ndarray, lengths: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A point on the ellipsoid {|tx-p| + |p-rx| = L} in a random direction, per path length L."""
    centre, half = (tx + rx) / 2, np.linalg.norm(rx - tx) / 2
    axis = (rx - tx) / (2 * half)
    u = rng.normal(size=(lengths.size, 3))
    u /= np.linalg.norm(u, axis=-1, keepdims=True)
    a = np.maximum(lengths / 2, half * (1 + 1e-6))
    b2 = a * a - half * half
    cos2 = (u @ axis) ** 2
    r = 1.0 / np.sqrt(cos2 / (a * a) + (1 - cos2) / np.maximum(b2, 1e-9))
    points = centre + r[:, None] * u
    points[0] = centre
    return points


def shadowing_db(points: np.ndarray, weights: np.ndarray, tx: np.ndarray, rx: np.ndarray,
                 bounces: np.ndarray, cfg: WifiConfig) -> np.ndarray:
    """Attenuation (dB, >= 0) [K,P] of each path by the body: scatterer points [K,S,3] near the
    legs Tx -> bounce -> Rx (a Gaussian of the distance, width ~ the Fresnel zone, times the
    point's weight [S]) add up to a blockage b, and the loss is shadow_db * (1 - exp(-b))."""
    legs = [(np.broadcast_to(tx, bounces.shape), bounces), (bounces, np.broadcast_to(rx, bounces.shape))]
    total = 0.0
    for a, b in legs:                                       # [P,3] each
        ab = b - a
        rel = points[:, None] - a[None, :, None]            # [K,P,S,3]
        s = np.clip(np.einsum("kpsd,pd->kps", rel, ab) / np.sum(ab * ab, -1)[None, :, None], 0, 1)
        dist = np.linalg.norm(rel - s[..., None] * ab[None, :, None], axis=-1)
        total = total + np.einsum("kps,s->kp", np.exp(-(dist / cfg.shadow_width_m) ** 2), weights)
    return cfg.shadow_db * (1.0 - np.exp(-total))          # saturates at shadow_db (fully blocked)


def path_phasors(tau, theta, freqs: np.ndarray) -> np.ndarray:
    """[P,3,114] unit phasors of each path at each antenna and subcarrier."""
    ant = np.arange(schema.WIFI_ANTENNAS)[None, :, None]
    return np.exp(-2j * np.pi * freqs[None, None, :] * tau[:, None, None]) \
        * np.exp(-1j * np.pi * ant * np.sin(theta)[:, None, None])


# Shadowing weight of each scatterer (joints, then bone midpoints), relative to the torso (1.0).
SHADOW_WEIGHT = np.array([0.6, 0.3, 0.25, 0.15, 0.3, 0.25, 0.15, 0.7, 0.7, 0.3, 0.4, 0.3, 0.2, 0.12, 0.3, 0.2, 0.12]
                         + [0.3, 0.25, 0.2, 0.3, 0.25, 0.2, 1.0, 1.0, 0.35, 0.35, 0.3, 0.25, 0.15, 0.3, 0.25, 0.15])


def scatterers(joints: np.ndarray) -> np.ndarray:
    """[...,17,3] joints -> [...,S,3] body scatterers: the joints and the midpoints of the bones."""
    a = [e[0] for e in schema.SKELETON_EDGES]
    b = [e[1] for e in schema.SKELETON_EDGES]
    return np.concatenate([joints, 0.5 * (joints[..., a, :] + joints[..., b, :])], axis=-2)


def body_channel(points: np.ndarray, env, cfg: WifiConfig, freqs: np.ndarray, scale: float) -> np.ndarray:
    """points [K,S,3] (one set per packet) -> [K,3,114] complex body reflections."""
    tx = np.asarray(env.wifi_tx_m)
    d_tx = np.linalg.norm(points - tx, axis=-1)                                  # [K,S]
    d_rx = np.linalg.norm(points[:, None] - rx_antennas(env, cfg)[None, :, None], axis=-1)  # [K,3,S]
    length = (d_tx[:, None] + d_rx).astype(np.float32)
    amp = (scale / (d_tx[:, None] * d_rx)).astype(np.float32)
    phase = np.float32(-2 * np.pi / SPEED_OF_LIGHT) * freqs.astype(np.float32)[None, None, :, None] \
        * length[:, :, None]                                                     # [K,3,114,S]
    real = np.einsum("kas,kafs->kaf", amp, np.cos(phase))
    imag = np.einsum("kas,kafs->kaf", amp, np.sin(phase))
    return real.astype(np.float64) + 1j * imag.astype(np.float64)


def body_scale(env, cfg: WifiConfig, reference_joints: np.ndarray, freqs: np.ndarray) -> float:
    """Scatterer strength so the body's total power is ``body_rel_db`` below the direct path."""
    direct = 1.0
    h = body_channel(scatterers(reference_joints)[None], env, cfg, freqs, 1.0)
    return float(direct * np.sqrt(10 ** (cfg.body_rel_db / 10) / np.mean(np.abs(h) ** 2)))


def edge_rolloff_db(env, cfg: WifiConfig) -> np.ndarray:
    """[114] dB added at the band edges (negative)."""
    k = np.arange(schema.WIFI_SUBCARRIERS)
    lo, hi = env.wifi_edge_drop_db
    return -lo * np.exp(-k / cfg.edge_width_sc) - hi * np.exp(-(k[::-1]) / cfg.edge_width_sc)


def packet_poses(joints: np.ndarray) -> np.ndarray:
    """[T,17,3] at 10 Hz -> [T,10,17,3] at the 10 packet times of each frame (linear interpolation)."""
    nxt = np.concatenate([joints[1:], joints[-1:]])
    w = (np.arange(schema.WIFI_PACKETS) / schema.WIFI_PACKETS)[None, :, None, None]
    return joints[:, None] * (1 - w) + nxt[:, None] * w


def session(rng: np.random.Generator, env, cfg: WifiConfig = WifiConfig()) -> Session:
    """A recording's channel state, drawn per sequence: Tx/Rx placement error, changed scattered
    paths (people, doors, furniture), direct-path, per-antenna and receiver gains."""
    p = env.wifi_paths
    factor = 1 + cfg.session_path_sigma * (rng.standard_normal(p) + 1j * rng.standard_normal(p)) / np.sqrt(2)
    factor[0] = 10 ** (cfg.direct_gain_sigma_db * rng.standard_normal() / 20)
    shift = np.sqrt(2) * cfg.antenna_jitter_m * rng.standard_normal(p)
    shift[0] = 0.0                                  # the direct path's length follows from tx_m, rx_m
    return Session(tx_m=np.asarray(env.wifi_tx_m) + cfg.antenna_jitter_m * rng.standard_normal(3),
                   rx_m=np.asarray(env.wifi_rx_m) + cfg.antenna_jitter_m * rng.standard_normal(3),
                   path_factor=factor, path_shift_m=shift,
                   antenna_db=rng.normal(0, cfg.antenna_gain_sigma_db, schema.WIFI_ANTENNAS),
                   gain_db=float(rng.normal(0, cfg.sequence_gain_sigma_db)))


def sequence(joints: np.ndarray, env, rng: np.random.Generator, cfg: WifiConfig = WifiConfig(),
             session_state: Session | None = None) -> tuple[np.ndarray, np.ndarray]:
    """[T,17,3] camera-frame joints -> (CSIamp, CSIphase), each float64 [T,3,114,10].

    session_state: from ``session`` (one per sequence); None = the room as specified (routers at
    their nominal places, no change of the paths, no gain offsets)."""
    n = joints.shape[0]
    freqs = subcarrier_hz(cfg)
    if session_state is not None:
        env = replace(env, wifi_tx_m=tuple(session_state.tx_m), wifi_rx_m=tuple(session_state.rx_m))
    gain, tau, theta, bounces = static_paths(env, cfg)
    rolloff = edge_rolloff_db(env, cfg)
    tx, rx = np.asarray(env.wifi_tx_m), np.asarray(env.wifi_rx_m)
    if session_state is not None:
        gain = gain * session_state.path_factor
        tau = tau + session_state.path_shift_m / SPEED_OF_LIGHT
        antenna_db, gain_db = session_state.antenna_db, session_state.gain_db
    else:
        antenna_db, gain_db = np.zeros(schema.WIFI_ANTENNAS), 0.0
    phasors = path_phasors(tau, theta, freqs)                                    # [P,3,114]
    scale = body_scale(env, cfg, joints[0], freqs)
    pts = scatterers(packet_poses(joints)).reshape(n * schema.WIFI_PACKETS, -1, 3)
    h = np.empty((pts.shape[0], schema.WIFI_ANTENNAS, schema.WIFI_SUBCARRIERS), dtype=np.complex128)
    # shadowing is smooth in time: evaluate it per frame and interpolate to the packets
    frame_shadow = shadowing_db(scatterers(joints), SHADOW_WEIGHT, tx, rx, bounces, cfg)      # [T,P]
    nxt = np.concatenate([frame_shadow[1:], frame_shadow[-1:]])
    w = (np.arange(schema.WIFI_PACKETS) / schema.WIFI_PACKETS)[None, :, None]
    shadow = 10 ** (-(frame_shadow[:, None] * (1 - w) + nxt[:, None] * w).reshape(pts.shape[0], -1) / 20)
    for i in range(0, pts.shape[0], 500):
        h[i:i + 500] = np.einsum("kp,pas->kas", shadow[i:i + 500] * gain[None], phasors) \
            + body_channel(pts[i:i + 500], env, cfg, freqs, scale)
    h = h.reshape(n, schema.WIFI_PACKETS, schema.WIFI_ANTENNAS, -1).transpose(0, 2, 3, 1)  # [T,3,114,10]
    # CSI estimation noise: complex, white over subcarriers and packets, csi_snr_db below the
    # channel's mean power (what limits the depth of a measured fade)
    noise_rms = np.sqrt(np.mean(np.abs(h) ** 2) * 10 ** (-cfg.csi_snr_db / 10) / 2)
    h = h + noise_rms * (rng.standard_normal(h.shape) + 1j * rng.standard_normal(h.shape))
    # receiver gain set at the start of the capture (subject standing still): the room's mean level
    level = env.wifi_level_db - np.mean(20 * np.log10(np.abs(h[0]))) - rolloff.mean()
    amp = 20 * np.log10(np.abs(h)) + level + rolloff[None, None, :, None]
    amp = amp + gain_db + antenna_db[None, :, None, None] \
        + rng.normal(0, cfg.packet_gain_sigma_db, (n, schema.WIFI_ANTENNAS, 1, schema.WIFI_PACKETS))
    phase = _measured_phase(np.angle(h), rng, cfg)
    _corrupt(amp, phase, rng, cfg)
    return amp.astype(np.float64), phase.astype(np.float64)


def _measured_phase(true_phase: np.ndarray, rng: np.random.Generator, cfg: WifiConfig) -> np.ndarray:
    """Add the per-packet common phase and slope and per-antenna offsets; wrap to [-pi, pi]."""
    n = true_phase.shape[0]
    sc = np.arange(schema.WIFI_SUBCARRIERS)[None, None, :, None] - schema.WIFI_SUBCARRIERS / 2
    common = rng.uniform(-np.pi, np.pi, (n, 1, 1, schema.WIFI_PACKETS))
    slope = rng.normal(0, cfg.phase_slope_sigma, (n, 1, 1, schema.WIFI_PACKETS))
    antenna = rng.uniform(-np.pi, np.pi, (1, schema.WIFI_ANTENNAS, 1, 1))
    noise = rng.normal(0, cfg.phase_noise_sigma, (n, schema.WIFI_ANTENNAS, 1, schema.WIFI_PACKETS))
    return np.angle(np.exp(1j * (true_phase + common + slope * sc + antenna + noise)))


def _corrupt(amp: np.ndarray, phase: np.ndarray, rng: np.random.Generator, cfg: WifiConfig) -> None:
    """In place: rare corrupted packets (-inf amplitude values, or a lost packet all NaN)."""
    for t in np.nonzero(rng.random(amp.shape[0]) < cfg.nonfinite_frame_rate)[0]:
        p = rng.integers(schema.WIFI_PACKETS)
        if rng.random() < cfg.lost_packet_share:
            amp[t, :, :, p] = np.nan
            phase[t, :, :, p] = np.nan
        else:
            k = rng.integers(1, 12)
            a = rng.integers(0, schema.WIFI_ANTENNAS, k)
            s = rng.integers(0, schema.WIFI_SUBCARRIERS, k)
            amp[t, a, s, p] = -np.inf
