"""The shared core of awc-pose: what every side (the sensor side, training, runtime, exporters)
imports. schema (modalities, shapes, units, skeleton), wire (protocol v1 codec), preprocess
(frame -> model inputs), posemath (MPJPE, Pearson profit, Shapley), settings (the config layer),
cli_util (shared CLI plumbing), keys (CurveZMQ keys and sockets).

Imports nothing of the project outside ``sensors.core`` and never imports torch
(docs/architecture.md).
"""
