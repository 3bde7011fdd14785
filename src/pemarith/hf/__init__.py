"""The model side of pemarith: base models, tasks and data, training, evaluation.

This is the only package that imports torch, transformers or peft, and only inside the modules
that need them: importing ``pemarith.hf`` itself, ``pemarith.hf.tasks``, ``pemarith.hf.data`` or
``pemarith.hf.skew`` loads no torch (the CLI lists tasks and reads data without paying for it).
Install with the ``[hf]`` extra.
"""
