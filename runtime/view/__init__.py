"""Live station viewer: a web page with the 3D skeleton, presence, contributions, degradation and
rehabilitation outputs of the pose stream, or of a recording played back with a time slider.

``frames`` (pure: pose message or recorded tick -> the JSON frame the page draws), ``hub``
(pose-stream subscriber and per-client latest-wins queues), ``server`` (the Starlette app and its
Server-Sent Events), ``command`` (``runtime view``). The page and its vendored three.js are in
``static/`` and ship in the wheel.
"""
