"""The engine's ADWIN step (river's compiled helper, called directly) against river's public API."""
import random

import pytest
from river.drift import ADWIN

from stream.detect import engine


@pytest.mark.parametrize("seed", range(6))
def test_adwin_step_is_estimation_then_update(seed):
    rng = random.Random(seed)
    engine._adwin()
    fast, ref = ADWIN(delta=0.002), ADWIN(delta=0.002)
    detections = 0
    level = 0.0
    for i in range(3000):
        if rng.random() < 0.004:
            level += rng.choice([-1, 1]) * rng.uniform(0.5, 5)
        v = level + rng.gauss(0, 1)
        before = ref.estimation
        ref.update(v)
        got = engine._adwin_step(fast, v)
        assert got == (before, ref.drift_detected)
        assert (fast.width, fast.estimation, fast.variance) == (ref.width, ref.estimation, ref.variance)
        detections += got[1]
    assert detections > 0  # the reset path ran


def test_adwin_step_falls_back_for_other_detectors():
    class Sub(ADWIN):
        pass

    engine._adwin()
    a, b = Sub(), ADWIN()
    for v in [0.0] * 50 + [10.0] * 50:
        assert engine._adwin_step(a, v) == engine._adwin_step(b, v)
