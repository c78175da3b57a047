"""Prompt matching: calibrated cosine scores, shapes, masks, hot reload, the prompt-embedding cache."""

import logging

import numpy as np
import pytest

from streamer.matcher import Calibration, Matcher, MatchScores, PromptCache, prompt_embeddings


def _rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def test_scores_are_the_calibrated_cosines_of_global_and_columns():
    prompts, glob, cols = _rand(3, 16, seed=1), _rand(2, 16, seed=2), _rand(2, 5, 16, seed=3)
    cal = Calibration(scale=10.0, bias=-5.0)
    out = Matcher(prompts * 7.0, ["dog", "glass", "siren"], cal)(glob, cols)  # scale of inputs is irrelevant
    assert isinstance(out, MatchScores) and out.labels == ("dog", "glass", "siren")
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    cos_g = unit(glob) @ unit(prompts).T
    cos_c = np.einsum("bce,pe->bcp", unit(cols), unit(prompts))
    assert out.global_scores.shape == (2, 3) and out.column_scores.shape == (2, 5, 3)
    assert out.column_scores.dtype == np.float32 and out.global_scores.dtype == np.float32
    np.testing.assert_allclose(out.global_cos, cos_g, atol=1e-5)
    np.testing.assert_allclose(out.column_cos, cos_c, atol=1e-5)
    np.testing.assert_allclose(out.column_scores, _sigmoid(10 * cos_c - 5), atol=1e-5)
    np.testing.assert_allclose(out.global_scores, _sigmoid(10 * cos_g - 5), atol=1e-5)


def test_calibration_is_a_bounded_monotone_map():
    cal = Calibration(scale=50.0, bias=-30.0)  # steep: no overflow at the ends
    s = cal(np.linspace(-1, 1, 201, dtype=np.float32))
    assert np.all(np.diff(s) >= 0) and s.min() >= 0 and s.max() <= 1 and np.isfinite(s).all()
    assert cal(np.float32(0.6)) == pytest.approx(0.5, abs=1e-6)  # 50 * 0.6 - 30 = 0
    with pytest.raises(ValueError):
        Calibration(scale=0.0, bias=0.0)
    manifest = {"frame_log_scale": np.log(12.0), "frame_bias": -4.0, "clap_logit_scale": 2.6}
    from_export = Calibration.from_manifest(manifest)
    assert (from_export.scale, from_export.bias) == pytest.approx((12.0, -4.0))


def test_invalid_columns_score_zero_and_a_zero_embedding_is_not_nan():
    m = Matcher(_rand(2, 8), ["a", "b"], Calibration(5.0, 0.0), global_calibration=Calibration(1.0, 2.0))
    cols = _rand(1, 4, 8)
    cols[0, 1] = 0.0
    valid = np.array([[True, True, False, True]])
    out = m(np.zeros((1, 8), np.float32), cols, valid)
    assert np.isfinite(out.column_scores).all() and np.isfinite(out.global_scores).all()
    assert (out.column_scores[0, 2] == 0).all() and (out.column_cos[0, 2] == 0).all()
    np.testing.assert_allclose(out.column_scores[0, 1], 0.5, atol=1e-6)  # cos 0, bias 0
    np.testing.assert_allclose(out.global_scores, _sigmoid(2.0), atol=1e-6)  # its own calibration


def test_set_prompts_swaps_labels_and_embeddings_and_checks_them():
    m = Matcher(_rand(2, 8), ["a", "b"], Calibration(10.0, -5.0))
    m.set_prompts(_rand(3, 8, seed=4), ["x", "y", "z"])
    assert m(_rand(1, 8), _rand(1, 2, 8)).column_scores.shape == (1, 2, 3)
    with pytest.raises(ValueError, match="unique"):
        m.set_prompts(_rand(2, 8), ["x", "x"])
    with pytest.raises(ValueError, match="labels"):
        m.set_prompts(_rand(2, 8), ["x"])
    with pytest.raises(ValueError, match=r"\(B, 8\)"):
        m(_rand(1, 9), _rand(1, 2, 9))
    assert m.labels == ("x", "y", "z")  # a refused reload keeps the prompts


class _Encoder:
    """A fake text tower: a fixed random vector per sentence, counting the sentences it encodes."""

    def __init__(self):
        self.calls: list[list[str]] = []

    def __call__(self, sentences):
        self.calls.append(list(sentences))
        return np.stack([_rand(8, seed=sum(map(ord, s))) * 3 for s in sentences])


def test_prompt_embeddings_are_cached_in_memory_and_on_disk(tmp_path):
    enc = _Encoder()
    cache = PromptCache(tmp_path)
    prompts = ["a dog barking", ["glass breaking", "a window shattering"]]
    first = prompt_embeddings(prompts, "hash1", enc, cache)
    assert first.shape == (2, 8) and np.allclose(np.linalg.norm(first, axis=1), 1)
    assert enc.calls == [["a dog barking", "glass breaking", "a window shattering"]]
    again = prompt_embeddings(["glass breaking", "a dog barking"], "hash1", enc, cache)
    assert len(enc.calls) == 1 and cache.hits == 2
    np.testing.assert_allclose(again[1], first[0])
    # the ensemble is the normalised mean of its unit sentence embeddings
    g, w = enc(["glass breaking"])[0], enc(["a window shattering"])[0]
    mean = g / np.linalg.norm(g) + w / np.linalg.norm(w)
    np.testing.assert_allclose(first[1], mean / np.linalg.norm(mean), atol=1e-6)
    # a restart reads the npz file: nothing to encode; another model hash encodes afresh
    enc2 = _Encoder()
    reloaded = prompt_embeddings(prompts, "hash1", enc2, PromptCache(tmp_path))
    assert enc2.calls == [] and np.allclose(reloaded, first)
    prompt_embeddings(prompts, "hash2", enc2, PromptCache(tmp_path))
    assert len(enc2.calls) == 1 and sorted(p.name for p in tmp_path.iterdir()) == [
        "prompts-hash1.npz",
        "prompts-hash2.npz",
    ]


def test_a_corrupt_cache_file_is_skipped_with_a_warning(tmp_path, caplog):
    (tmp_path / "prompts-h.npz").write_bytes(b"not a zip file")
    enc = _Encoder()
    with caplog.at_level(logging.WARNING, logger="streamer.matcher"):
        out = prompt_embeddings(["a siren"], "h", enc, PromptCache(tmp_path))
    assert out.shape == (1, 8) and enc.calls == [["a siren"]]
    assert "unreadable" in caplog.text
    assert np.load(tmp_path / "prompts-h.npz")["texts"].tolist() == ["a siren"]  # rewritten
