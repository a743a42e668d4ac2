"""Model construction for the engine: the compiled Half-Space Trees when built, river's otherwise.

The compiled model (``stream.detect.hst``) is held to river's scores by a parity test; the
river fallback exists only so the pure core can be imported before the extension is built.
"""
from __future__ import annotations

import pickle

_TAG_RIVER = b"R"
_TAG_HST = b"H"


def make_model(params):
    try:
        from stream.detect.hst import HalfSpaceTrees
    except ImportError:
        from river.anomaly import HalfSpaceTrees
    return _Wrapped(HalfSpaceTrees(n_trees=params.n_trees, height=params.height,
                                   window_size=params.window_size, seed=params.seed))


class _Wrapped:
    __slots__ = ("m",)

    def __init__(self, m):
        self.m = m

    def score_one(self, x):
        return self.m.score_one(x)

    def learn_one(self, x):
        self.m.learn_one(x)

    def to_bytes(self) -> bytes:
        if hasattr(self.m, "to_bytes"):
            return _TAG_HST + self.m.to_bytes()
        return _TAG_RIVER + pickle.dumps(self.m, protocol=5)


def model_from_bytes(b: bytes):
    if b[:1] == _TAG_HST:
        from stream.detect.hst import HalfSpaceTrees

        return _Wrapped(HalfSpaceTrees.from_bytes(b[1:]))
    return _Wrapped(pickle.loads(b[1:]))
