"""What the trainer and the rover share: the label set, the preprocessing, the IoU metrics and
the metadata document a model carries. The trainer imports these; nothing here imports the
rest of ``edge``."""
