"""Platt scaling recovers the scale and bias that generated the labels."""

import numpy as np
import pytest

from encoder.calibrate import fit_platt


def test_fit_platt_recovers_a_known_sigmoid():
    rng = np.random.default_rng(0)
    cos = rng.uniform(-0.2, 0.8, 50_000)
    p = 1 / (1 + np.exp(-(12.0 * cos - 4.0)))
    y = (rng.uniform(size=cos.size) < p).astype(float)
    scale, bias = fit_platt(cos, y)
    assert scale == pytest.approx(12.0, rel=0.1) and bias == pytest.approx(-4.0, rel=0.1)
