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


def test_balanced_fit_puts_one_half_where_the_classes_are_equally_likely():
    rng = np.random.default_rng(1)
    pos, neg = rng.normal(0.4, 0.1, 1000), rng.normal(0.0, 0.1, 99_000)  # a 1 % prior
    cos, y = np.concatenate([pos, neg]), np.concatenate([np.ones(1000), np.zeros(99_000)])
    scale, bias = fit_platt(cos, y, balanced=True)
    assert -bias / scale == pytest.approx(0.2, abs=0.02)  # midway between the two means
    scale_prior, bias_prior = fit_platt(cos, y)
    assert -bias_prior / scale_prior > 0.25  # the 1 % prior pushes the 0.5 point up
