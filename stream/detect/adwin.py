"""ADWIN drift detection, river-exact, in a compact compiled form (:mod:`stream.detect._adwin`).

The engine keeps one ADWIN per metric of every entity. river's ``river.drift.ADWIN`` (a Python
object with a ``__dict__`` around a Rust helper holding two vectors per bucket level) costs
about 1.1 KB after a few dozen values. :class:`ADWIN` keeps its bucket rows in one small C
block in window order (145 bytes in all after 5 values, 324 after 36, by RSS), with river's
algorithm, parameters and floating-point operations in the same order: ``drift_detected``, ``estimation``, ``width``, ``variance`` and
``total`` are bit-identical to river's at every step (``tests/unit/test_adwin.py``), including
river's wrapper behaviour of starting over at the update after a detection. It pickles to a
short byte string with a leading version byte (:meth:`ADWIN.to_bytes`).

:class:`ADWIN` is the compiled class itself, not a Python subclass: instances of a Python
class are tracked by the garbage collector (16 more bytes each, and traversed by every full
collection), which a detector per metric per entity would pay hundreds of thousands of times.

river's documented example (a change of distribution after 1000 values), with river's result:

>>> import random
>>> rng = random.Random(12345)
>>> adwin = ADWIN()
>>> data_stream = rng.choices([0, 1], k=1000) + rng.choices(range(4, 8), k=1000)
>>> for i, val in enumerate(data_stream):
...     if adwin.update(val):
...         print(f"Change detected at index {i}, input value: {val}")
...         break
Change detected at index 1023, input value: 4
>>> adwin.drift_detected, adwin.n_detections, adwin.width, adwin.estimation
(True, 1, 32.0, 4.5)

The same numbers as river's, to the bit:

>>> from river import drift
>>> ref = drift.ADWIN()
>>> for val in data_stream[:1024]:
...     ref.update(val)
>>> (ref.drift_detected, ref.width, ref.total, ref.variance) == (True, adwin.width, adwin.total, adwin.variance)
True

As river's, the next update starts over; a pickled copy goes on exactly as the original:

>>> adwin.update(5), adwin.width, adwin.n_detections
(False, 1.0, 0)
>>> import pickle
>>> copy = pickle.loads(pickle.dumps(adwin))
>>> more = data_stream[1025:]
>>> [copy.update(v) for v in more] == [adwin.update(v) for v in more]
True
>>> (copy.width, copy.total, copy.variance) == (adwin.width, adwin.total, adwin.variance)
True
"""
from __future__ import annotations

from stream.detect._adwin import ADWIN, FORMAT_VERSION

__all__ = ["ADWIN", "FORMAT_VERSION"]
