"""Evaluation metrics on cases small enough to check by hand."""

import numpy as np
import pytest

from encoder.evaluate import (
    average_precision,
    classification_metrics,
    dev_clips,
    frame_metrics,
    retrieval_metrics,
    top1_by_group,
)


def test_average_precision_of_a_perfect_and_a_reversed_ranking():
    assert average_precision(np.array([0.9, 0.8, 0.1]), np.array([1, 1, 0])) == 1.0
    # positives ranked 2nd and 3rd: (1/2 + 2/3) / 2
    assert average_precision(np.array([0.9, 0.5, 0.1]), np.array([0, 1, 1])) == pytest.approx(7 / 12)


def test_top1_counts_a_hit_when_the_best_prompt_is_any_of_the_clips_labels():
    scores = np.array([[0.9, 0.1, 0.0], [0.1, 0.2, 0.9]])
    truth = np.array([[1, 0, 1], [1, 0, 0]], bool)
    m = classification_metrics(scores, truth)
    assert m["top1"] == 0.5 and m["top5"] == 1.0


def test_top1_is_also_reported_within_each_group_of_clips():
    truth = np.array([[1, 0], [0, 1], [1, 0]], bool)
    scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9]])  # right, wrong, wrong
    groups = np.array(["ambience_bed", "noise_bed", "ambience_bed"])
    assert top1_by_group(scores, truth, groups) == {"top1_ambience_bed": 0.5, "top1_noise_bed": 0.0}


def test_retrieval_recall_at_k():
    a = np.eye(3)
    t = np.array([[1, 0, 0], [0, 0, 1], [0, 1, 0]], float)  # clips 1 and 2 swapped
    r = retrieval_metrics(a, t)
    assert r["t2a_R@1"] == pytest.approx(1 / 3) and r["a2t_R@5"] == 1.0


def test_event_and_segment_f1():
    y = np.zeros((20, 1), bool)
    y[5:12] = True
    hit = y.astype(float)
    late = np.roll(hit, 6, axis=0)  # onset ~1 s late: outside the 0.5 s collar
    assert frame_metrics([hit], [y]) == {"segment_F1": 1.0, "event_F1": 1.0}
    assert frame_metrics([late], [y])["event_F1"] == 0.0


def test_threshold_search_reaches_past_095():
    from encoder.evaluate import THRESHOLDS, best_frame_metrics

    assert max(THRESHOLDS) >= 0.99
    y = np.zeros((20, 1), bool)
    y[5:10] = True
    probs = np.full((20, 1), 0.96)  # over-confident everywhere ...
    probs[5:10] = 0.995  # ... but still ranked right
    assert best_frame_metrics([probs], [y])["event_F1"] == 1.0


def test_event_f1_through_the_engine_detector_counts_one_flickering_sound_once():
    """The dev bar is scored after the engine's smoothing and hysteresis: a score that dips for one
    column inside a sound is one event there, two onsets (one false) when each column stands alone."""
    from encoder.evaluate import best_frame_metrics, frame_metrics
    from streamer.cli import engine_detect
    from streamer.config import DetectorConfig

    y = np.zeros((40, 1), bool)
    y[5:25] = True
    probs = np.where(y, 0.9, 0.02)
    probs[14] = 0.3  # one weak column mid-sound
    detect = engine_detect(DetectorConfig())
    assert frame_metrics([probs], [y], 0.5)["event_F1"] == pytest.approx(2 / 3)
    assert frame_metrics([probs], [y], 0.5, detect)["event_F1"] == 1.0
    best = best_frame_metrics([probs], [y], detect)
    assert best["event_F1"] == 1.0 and best["event_F1_raw"] == 1.0  # raw finds a threshold under 0.3
    blip = np.where(y, 0.9, 0.02)
    blip[30] = 0.99  # one loud column after the sound: shorter than the minimum duration
    assert frame_metrics([blip], [y], 0.5)["event_F1"] == pytest.approx(2 / 3)
    assert frame_metrics([blip], [y], 0.5, detect)["event_F1"] == 1.0


def test_linear_probe_separates_what_carries_over_from_what_is_memorised():
    """Features with a class direction generalise to new rows; per-row noise does not."""
    from encoder.probe import probe

    rng = np.random.default_rng(0)
    k, d = 4, 16
    y_tr, y_dev = (np.eye(k, dtype=np.float32)[rng.integers(0, k, n)] for n in (200, 100))
    centers = rng.normal(size=(k, d)) * 3
    good = probe(y_tr @ centers + rng.normal(size=(200, d)), y_tr, y_dev @ centers + rng.normal(size=(100, d)), y_dev)
    assert good["dev_top1"] > 0.9
    ids_only = probe(rng.normal(size=(200, 300)), y_tr, rng.normal(size=(100, 300)), y_dev)  # memorisable, no class
    assert ids_only["train_top1"] > 0.9 and ids_only["dev_top1"] < 0.5


def test_dev_clips_are_spread_over_the_split_not_its_first_kind():
    class Clip:
        def __init__(self, i, kind, n_samples=16000):
            self.id, self.kind, self.n_samples = f"dev-{kind}-{i}", kind, n_samples

    class Corpus:  # a manifest lists its clean clips before its mixtures
        def clips(self, split):
            return ([Clip(i, "clean") for i in range(60)] + [Clip(i, "mix") for i in range(40)]
                    + [Clip(0, "short", n_samples=100)])  # shorter than one column: never scored

    picked = dev_clips(Corpus(), 50)
    assert len({c.id for c in picked}) == 50 and all(c.kind != "short" for c in picked)
    assert 25 <= sum(c.kind == "clean" for c in picked) <= 35  # the split's 60 / 40, not 50 clean
    assert picked[0].id == "dev-clean-0" and picked[-1].id == "dev-mix-39"
    assert len(dev_clips(Corpus(), 500)) == 100  # fewer than asked: all of them
