"""awc-pose sensors: the shared core (``sensors.core``) and the sensor side: MM-Fi reader, synthetic
generator, replay and live publishers, fault injection, fuzzing.

The sensor side imports ``sensors.core`` and nothing of the project's other packages; neither
imports torch (docs/architecture.md).
"""
