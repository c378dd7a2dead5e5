"""Workbench: see what pruning and quantization cost and buy, side by side."""

__version__ = "0.1.0"
