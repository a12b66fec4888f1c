"""What ``edge-seg run`` does: the frame loop and its statistics (loop, quantiles), regions and
hazards (hazards), and the run's identity, heartbeat and software versions (telemetry)."""
