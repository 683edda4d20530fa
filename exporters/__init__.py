"""awc-pose exporters: Prometheus metrics, ZeroMQ pose publisher, recorders (torch-free)."""
