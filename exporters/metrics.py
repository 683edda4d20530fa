"""Prometheus metrics of the runtime: the one list of names, types and labels.

Conventions (docs/runtime.md, "Metrics"): prefix ``awc_``, base units in the name (``_seconds``, ``_ratio``),
counters end in ``_total``, label values only from closed sets (below). Gauges carry smoothed
(EWMA) per-tick values; the exact per-tick values go on the pose output stream.

Besides the runtime's own series the registry carries the process collector (``process_*``:
resident memory, CPU seconds, open files) and ``awc_build_info`` (package version and the served
model's config hash, training data and export date). The ``_created`` series prometheus_client adds
beside each counter and histogram are switched off: they double the series count and nothing in
deploy/ reads them.

Two per-modality ratios keep "sensor silent" apart from "sensor saw nothing":
``awc_modality_received_ratio`` counts ticks that found a message of the modality at all (an
empty radar frame included), ``awc_modality_presence_ratio`` ticks whose input reached the model
(an empty cloud is absent to the model, as in training), and ``awc_modality_empty_ratio`` ticks
whose message was an empty cloud. A still subject in front of the radar lowers presence and
raises the empty ratio; a stopped sensor lowers the received ratio.

The deploy/ dashboard and alert rules query these names; a test checks they match.
"""

from __future__ import annotations

from importlib import metadata

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector

from exporters.http_server import CLOSE_REASONS
from exporters.web_config import AUTH_OUTCOMES
from sensors.core import keys, schema

# Counters and histograms without their ``<name>_created`` gauges (see the module docstring).
prometheus_client.disable_created_metrics()

# Closed label sets.
MODALITY_LABELS: tuple[str, ...] = schema.MODALITIES
DROP_REASONS: tuple[str, ...] = schema.DROP_REASONS
HANDSHAKE_FAILURE_REASONS: tuple[str, ...] = keys.HANDSHAKE_FAILURE_REASONS   # refused sensor/viewer connections
HTTP_CLOSE_REASONS: tuple[str, ...] = CLOSE_REASONS    # connections the HTTP guard closed (shed, refused, ...)
HTTP_AUTH_REFUSALS: tuple[str, ...] = AUTH_OUTCOMES    # requests basic auth refused (unauthorized, rate_limited)
TICK_OUTCOMES: tuple[str, ...] = ("fused", "partial", "empty", "invalid", "dropped")
TRAINING_DATA: tuple[str, ...] = ("synthetic", "real", "unknown")
STAGES: tuple[str, ...] = ("decode", "sync", "preprocess", "inference", "contributions", "degradation",
                           "rehab", "publish")
ANGLE_CHANNELS: tuple[tuple[str, str], ...] = schema.ANGLE_CHANNELS       # (angle, side) of the joint angles
# (angle, side) a repetition can be counted on: limb angles per side or both together, trunk angles none.
REPETITION_CHANNELS: tuple[tuple[str, str], ...] = (
    tuple((a, s) for a in schema.LIMB_ANGLES for s in ("left", "right", "both"))
    + tuple((a, schema.NO_SIDE) for a in schema.TRUNK_ANGLES))
UNKNOWN_EXERCISE = "unknown"       # any other code (a P1 action, none)
EXERCISE_LABELS: tuple[str, ...] = (*schema.PROTOCOLS["P2"], UNKNOWN_EXERCISE)
POSE_CHECKS: tuple[str, ...] = ("bone_length", "angle_limit", "jitter")   # runtime.rehab.plausibility.CHECKS

LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.5)
STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5)


class RuntimeMetrics:
    """All runtime metrics, registered on ``registry`` (a fresh one per runtime, so tests can run
    several runtimes in one process)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.messages_received = Counter(
            "awc_messages_received_total", "Valid sensor messages received", ["modality"], registry=r)
        self.messages_dropped = Counter(
            "awc_messages_dropped_total", "Sensor messages dropped or lost, by reason",
            ["modality", "reason"], registry=r)
        self.handshake_failures = Counter(
            "awc_ingest_handshake_failures_total",
            "Sensor connections refused at the CurveZMQ handshake, by reason (docs/security.md)", ["reason"],
            registry=r)
        self.pose_handshake_failures = Counter(
            "awc_pose_handshake_failures_total",
            "Pose-stream (viewer) connections refused at the CurveZMQ handshake, by reason (docs/security.md)",
            ["reason"], registry=r)
        self.http_closed = Counter(
            "awc_http_connections_closed_total",
            "HTTP connections the server closed to protect itself, by reason (docs/security.md)", ["reason"],
            registry=r)
        self.http_auth_refused = Counter(
            "awc_http_auth_refused_total", "HTTP requests refused by basic auth, by reason (docs/security.md)",
            ["reason"], registry=r)
        self.ticks = Counter("awc_ticks_total", "Sync ticks by outcome", ["outcome"], registry=r)
        self.received = Gauge(
            "awc_modality_received_ratio",
            "Fraction of recent ticks that found a message of the modality, empty or not (EWMA)",
            ["modality"], registry=r)
        self.presence = Gauge(
            "awc_modality_presence_ratio",
            "Fraction of recent ticks with the modality's input present to the model (EWMA)",
            ["modality"], registry=r)
        self.empty = Gauge(
            "awc_modality_empty_ratio",
            "Fraction of recent ticks whose message of the modality was an empty point cloud (EWMA)",
            ["modality"], registry=r)
        self.staleness = Gauge(
            "awc_modality_staleness_seconds", "Age of the newest sample of the modality at the tick",
            ["modality"], registry=r)
        self.sync_skew = Gauge(
            "awc_sync_skew_seconds", "Capture time of the used sample minus the tick time (EWMA)",
            ["modality"], registry=r)
        self.contribution_share = Gauge(
            "awc_contribution_share_ratio", "Share of the live Shapley contribution (sliding window)",
            ["modality"], registry=r)
        self.baseline_share = Gauge(
            "awc_contribution_baseline_share_ratio",
            "Contribution share measured on validation data (from the model metadata)",
            ["modality"], registry=r)
        self.shapley_value = Gauge(
            "awc_shapley_value", "Live Shapley value with the Pearson profit (sliding window)",
            ["modality"], registry=r)
        self.degradation_score = Gauge(
            "awc_degradation_score_ratio", "Degradation score in [0, 1] (1 = failed)", ["modality"],
            registry=r)
        self.degraded = Gauge(
            "awc_modality_degraded", "1 while the modality is flagged degraded (with hysteresis)",
            ["modality"], registry=r)
        self.degradation_events = Counter(
            "awc_degradation_events_total", "Times a modality became flagged degraded", ["modality"],
            registry=r)
        self.tick_errors = Counter(
            "awc_tick_errors_total", "Ticks that failed and were skipped (logged), by stage", ["stage"],
            registry=r)
        self.stage_duration = Histogram(
            "awc_stage_duration_seconds", "Time per tick spent in each pipeline stage", ["stage"],
            buckets=STAGE_BUCKETS, registry=r)
        self.end_to_end_latency = Histogram(
            "awc_end_to_end_latency_seconds",
            "Newest used capture time to pose published", buckets=LATENCY_BUCKETS, registry=r)
        self.tick_rate = Gauge("awc_tick_rate_hertz", "Configured sync tick rate", registry=r)
        self.ready = Gauge(
            "awc_ready", "1 while poses are flowing: ingest running and a recent tick produced a pose",
            registry=r)
        self.ingest_queue_depth = Gauge(
            "awc_ingest_queue_depth", "Decoded sensor messages waiting in the ingest queue", registry=r)
        self.build_info = Info(
            "awc_build", "Package version; served model's config hash, training data and export date",
            registry=r)
        self.build_info.info(build_labels())
        self.model_info = Info(
            "awc_model", "Served model: schema version, fusion, config hash, window and caps", registry=r)
        self.provider_info = Info(
            "awc_inference_provider", "Execution provider requested and really used", registry=r)
        self.gpu_fallback = Gauge(
            "awc_inference_gpu_fallback", "1 when a GPU was requested but the CPU provider runs",
            registry=r)
        # Rehabilitation (docs/rehab.md). Angles in degrees, the unit therapists read and write.
        self.joint_angle = Gauge(
            "awc_joint_angle_degrees", "Joint angle of the current pose, causally smoothed", ["angle", "side"],
            registry=r)
        self.implausible_angles = Counter(
            "awc_joint_angle_implausible_samples_total",
            "Joint-angle samples dropped as outside the physiological range (held, not smoothed in)",
            ["angle", "side"], registry=r)
        self.repetitions = Counter(
            "awc_rehab_repetitions_total", "Repetitions counted, by principal angle and side", ["angle", "side"],
            registry=r)
        self.low_confidence_repetitions = Counter(
            "awc_rehab_low_confidence_repetitions_total",
            "Repetitions marked low-confidence (a key modality degraded or mostly absent, implausible poses, "
            "an exercise the model never learnt)", ["angle", "side"], registry=r)
        self.last_rom = Gauge(
            "awc_rehab_last_range_of_motion_degrees", "Range of motion of the last counted repetition",
            ["angle", "side"], registry=r)
        self.exercise = Gauge(
            "awc_rehab_exercise", "1 for the current exercise (P2 code or unknown), 0 for the others", ["exercise"],
            registry=r)
        self.exercise_repetitions = Gauge(
            "awc_rehab_exercise_repetitions", "Repetitions counted since the current exercise started", registry=r)
        self.exercise_untrained = Gauge(
            "awc_rehab_exercise_untrained",
            "1 while the current exercise is one the served model was never trained on (its figures are untrusted)",
            registry=r)
        self.implausible_pose_ticks = Counter(
            "awc_rehab_implausible_pose_ticks_total",
            "Ticks whose pose failed a plausibility check (bone length, angle limit, jitter)", ["check"], registry=r)
        ProcessCollector(registry=r)
        self._init_label_sets()

    def set_model_build(self, config_hash: str, training_data: str, export_date: str) -> None:
        """Fill ``awc_build_info`` with the served model's provenance (from its metadata)."""
        self.build_info.info(build_labels(config_hash, training_data, export_date))

    def _init_label_sets(self) -> None:
        """Create every labelled child at 0 so series exist before the first event."""
        for m in (*MODALITY_LABELS, schema.UNKNOWN_MODALITY):
            for reason in DROP_REASONS:
                self.messages_dropped.labels(modality=m, reason=reason)
        for reason in HANDSHAKE_FAILURE_REASONS:
            self.handshake_failures.labels(reason=reason)
            self.pose_handshake_failures.labels(reason=reason)
        for m in MODALITY_LABELS:
            self.messages_received.labels(modality=m)
            self.degradation_events.labels(modality=m)
            for g in (self.received, self.presence, self.empty, self.staleness, self.sync_skew, self.contribution_share,
                      self.baseline_share, self.shapley_value, self.degradation_score, self.degraded):
                g.labels(modality=m)
        for reason in HTTP_CLOSE_REASONS:
            self.http_closed.labels(reason=reason)
        for reason in HTTP_AUTH_REFUSALS:
            self.http_auth_refused.labels(reason=reason)
        for outcome in TICK_OUTCOMES:
            self.ticks.labels(outcome=outcome)
        for stage in STAGES:
            self.stage_duration.labels(stage=stage)
            self.tick_errors.labels(stage=stage)
        for angle, side in ANGLE_CHANNELS:
            self.joint_angle.labels(angle=angle, side=side)
            self.implausible_angles.labels(angle=angle, side=side)
        for angle, side in REPETITION_CHANNELS:
            for m in (self.repetitions, self.low_confidence_repetitions, self.last_rom):
                m.labels(angle=angle, side=side)
        for code in EXERCISE_LABELS:
            self.exercise.labels(exercise=code)
        for check in POSE_CHECKS:
            self.implausible_pose_ticks.labels(check=check)


def package_version() -> str:
    """Installed version of the awc-pose distribution ("unknown" when run from a bare checkout)."""
    try:
        return metadata.version("awc-pose")
    except metadata.PackageNotFoundError:
        return "unknown"


def build_labels(config_hash: str = "", training_data: str = "unknown", export_date: str = "") -> dict[str, str]:
    """Labels of ``awc_build_info``; ``training_data`` outside the closed set becomes "unknown"."""
    return {"version": package_version(), "model_config_hash": config_hash,
            "training_data": training_data if training_data in TRAINING_DATA else "unknown",
            "export_date": export_date}


def exported_metric_names(metrics: RuntimeMetrics) -> dict[str, set[str]]:
    """Every exported sample name (as Prometheus sees it) -> the label names it carries."""
    out: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return out
