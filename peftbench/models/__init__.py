"""Backbones and what the harness knows about model architectures.

``architectures`` is the one place for a family's facts (module names a method targets,
head names, layer stacks); ``backbones`` loads a pretrained model with the task's head from
an offline asset, a local folder or the Hub; ``gguf`` dequantizes GGUF checkpoints once.
"""
