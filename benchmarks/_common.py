"""Helpers shared by the benchmark scripts (run as ``python benchmarks/<script>.py``)."""
from __future__ import annotations

import gc
import os
import time


def best_of(repeats: int, fn):
    """(fastest wall time of ``repeats`` calls of ``fn``, the last call's result); a full garbage
    collection before each call, so one run's garbage is not collected inside the next."""
    best, out = float("inf"), None
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def write_json(path: str, obj) -> None:
    """Write the figures as indented JSON, creating the folder."""
    import orjson

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
