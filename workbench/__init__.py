"""Workbench: see what pruning and quantization cost and buy, side by side."""

import os

# the profiler (per-inference memory) otherwise prints start/stop lines on stderr
os.environ.setdefault("KINETO_LOG_LEVEL", "5")

__version__ = "0.1.0"
