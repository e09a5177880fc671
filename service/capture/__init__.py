"""Prediction capture: every answered prediction becomes one JSON Lines record.

The request path only appends to an in-memory queue (`CaptureRecorder.record`);
a background task batches the queue into gzip JSON Lines parts and hands them
to a sink (a local directory or S3) on worker threads. A part that cannot be
uploaded is spooled to local disk and uploaded when the sink returns.

    <prefix>/<env>/YYYY/MM/DD/HH/<UTC time>-<host>-<pid>-<random>-<seq>.jsonl.gz

`partformat` owns that layout and the encoding; readers and the compactor use it too.
"""

from service.capture.interface import NullRecorder, PredictionRecorder
from service.capture.recorder import CaptureConfig, CaptureRecorder, build_recorder
from service.capture.sinks import Sink, open_sink

__all__ = [
    "CaptureConfig",
    "CaptureRecorder",
    "NullRecorder",
    "PredictionRecorder",
    "Sink",
    "build_recorder",
    "open_sink",
]
