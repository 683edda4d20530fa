"""awc-pose runtime: ZeroMQ ingest, sync, onnxruntime inference, live contributions, degradation.

Torch-free: a station installs no torch.
"""
