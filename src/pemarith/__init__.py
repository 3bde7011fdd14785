"""pemarith: compose parameter-efficient modules (LoRA, (IA)3) with arithmetic.

The core is model-free: it reads and writes PEFT adapter files with numpy and safetensors
and never imports torch, transformers or peft.
"""

__version__ = "0.1.0"
