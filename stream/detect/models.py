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

    def score_base(self, base, inv_scale: float) -> float:
        """``score_one`` of the x of ``base``'s last standardize (``base.x_dict(inv_scale)``),
        without building it for the compiled trees (a river model, from an old state, takes the
        dict)."""
        m = self.m
        if hasattr(m, "score_base"):
            return m.score_base(base, inv_scale)
        return float(m.score_one(base.x_dict(inv_scale)))

    def learn_base(self, base, inv_scale: float) -> None:
        m = self.m
        if hasattr(m, "learn_base"):
            m.learn_base(base, inv_scale)
        else:
            m.learn_one(base.x_dict(inv_scale))

    def to_bytes(self) -> bytes:
        if hasattr(self.m, "to_bytes"):
            return _TAG_HST + self.m.to_bytes()
        return _TAG_RIVER + pickle.dumps(self.m, protocol=5)


def model_from_bytes(b: bytes):
    if b[:1] == _TAG_HST:
        from stream.detect.hst import HalfSpaceTrees

        return _Wrapped(HalfSpaceTrees.from_bytes(b[1:]))
    return _Wrapped(pickle.loads(b[1:]))
