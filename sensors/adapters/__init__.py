"""Adapters from the sensors MM-Fi was recorded with to wire v1 (docs/sensors.md).

One module per device, each a ``sensors`` subcommand reading the live device or a recording in
the vendor's own format: ``camera`` (V4L2/video/images + an ONNX keypoint model -> ``rgb``),
``ouster`` (ouster-sdk, live or pcap -> ``lidar``), ``iwr6843`` (TI out-of-box demo over UART ->
``mmwave``), ``csi`` (Atheros CSI tool log through csiread -> ``wifi``). ``outlet`` is the
publishing loop they share: sequence numbers, counted drops, device clocks, pacing, SIGTERM.
Each vendor library is imported only when its adapter runs (its own pyproject extra).
"""
