"""Rehabilitation outputs of the runtime (docs/rehab.md): joint angles (``angles``), the exercise
models of MM-Fi's protocol P2 (``exercises``), the repetition counter (``repetitions``), trust per
repetition from the live contributions (``trust``), the per-station monitor the pipeline calls
every tick (``monitor``), the session report (``report``, `runtime report`) and the accuracy
evaluation against the generator's truth (``evaluate``, `runtime rehab-eval`).

Imports nothing of the runtime outside this package: the pipeline calls the monitor, not the
other way round (tests/test_import_direction.py).
"""
