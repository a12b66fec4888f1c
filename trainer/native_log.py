"""Where the C++ code of TensorFlow and its converter may talk: a file, not the terminal.

TensorFlow 2.21 prints its oneDNN and absl banners at import and the converter its MLIR notes
and "fully_quantize: 0, inference_type: 6 ..." straight on file descriptor 2, whatever
``TF_CPP_MIN_LOG_LEVEL`` says; Python's logging cannot filter them. Kept apart from
:mod:`trainer.convert` because it must be in place *before* TensorFlow is imported.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path


@contextlib.contextmanager
def native_log(path: Path | None):
    """Send what TensorFlow's and the converter's C++ code print on stderr (absl lines,
    "fully_quantize: 0, inference_type: 6 ...", MLIR notes) to ``path`` instead of the terminal:
    they are noise to a user unless the conversion fails, and then the error names the file.
    ``path=None``: leave stderr alone."""
    if path is None:
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr to route
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except Exception as err:
            err.add_note(f"(TensorFlow's own messages are in {path})")
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
    if path.is_file() and path.stat().st_size == 0:
        path.unlink()  # nothing was said: no empty file left behind
