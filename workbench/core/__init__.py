"""The Qt-free core: models, sources, optimization, measurements."""

import torch

# Subnormal floats (left by weight updates such as SparseGPT's) make CPU kernels 100x
# slower; flushing them to zero changes no result that matters here.
torch.set_flush_denormal(True)
