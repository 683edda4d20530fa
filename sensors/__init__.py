"""awc-pose sensors: schema, MM-Fi reader, synthetic generator, wire codec, publishers.

Imports nothing of the project's other packages and never imports torch.
"""
