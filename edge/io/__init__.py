"""Frames in and results out: decoding that refuses what would exhaust a rover (decode), the
camera folder and its watcher (camera), npz sets (npz), label folders (labels), and the writers
of masks, overlays and telemetry with atomic writes (sinks)."""
