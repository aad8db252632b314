"""Test set-up. Without a GPU, Triton kernels run on CPU tensors in Triton's
interpreter, which must be switched on before triton is first imported."""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
