"""The Qt-free core: models, sources, optimization, measurements.

Importing it costs nothing heavy: torch is imported by the modules that need it, so the
window can appear before torch loads. Process-wide settings live in :mod:`.process`."""
