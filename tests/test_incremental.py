"""The incremental encoder: a hop encodes only its new columns against per-stream caches.

Specifications: one hop from an empty cache is exactly the full-window encoder; ONNX Runtime
(fp32, and int8 within quantisation error) agrees with the PyTorch reference hop after hop while
the cache slides; a batch of streams with different cache lengths and new columns gives what each
stream gives alone; the cache keeps the newest columns as one contiguous view. The model is
slap-tiny with seeded random weights (what is tested is the arithmetic, not what it learnt)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import encoder.export as export_mod
from encoder.checkpoint import load_model
from encoder.export import cosine_rows
from encoder.runtime.onnx_backend import OnnxBackend
from encoder.runtime.stream_cache import CacheSpec, StreamCache, batch_inputs, encode_new_columns, rope_angles
from encoder.runtime.torch_backend import TorchBackend
from streamer.config import ConfigError, parse_config

COLS = 16  # frames per column


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("cache")
    return export_mod.materialise_config("slap-tiny", d / "models" / "slap-tiny-seed0.safetensors")


@pytest.fixture(scope="module")
def export_dir(model_file) -> Path:
    return export_mod.export_cached(model_file, model_file.parents[1])


def mel_columns(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, 64, n * COLS)).astype(np.float32)


def stream(backend, mel: np.ndarray, hops: list[int], max_columns: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Feed mel (1, 64, T) hop by hop (hops: new columns per hop); returns per-hop columns, globals."""
    cache = StreamCache(max_columns, backend.cache_spec)
    cache.clear(1_000_000)  # a stream that has run for ~44 hours: positions far from any seen in training
    cols, globs, at = [], [], 0
    for n in hops:
        c, g = encode_new_columns(backend, mel[:, :, at * COLS : (at + n) * COLS], np.array([n]), [cache])
        cols.append(c[0, :n])
        globs.append(g[0])
        at += n
    return cols, globs


def test_one_hop_from_an_empty_cache_is_the_full_window_encoder(model_file):
    backend = TorchBackend(model_file)
    mel = mel_columns(20, 0)
    with torch.no_grad():
        full = backend.model.audio(torch.from_numpy(mel), torch.tensor([20 * COLS]))
    for start in (0, 123_457):  # any stream position: attention sees only column differences
        cache = StreamCache(62, backend.cache_spec)
        cache.clear(start)
        cols, glob = encode_new_columns(backend, mel, np.array([20]), [cache])
        np.testing.assert_allclose(cols, full.columns.numpy(), atol=2e-4, rtol=1e-3)
        np.testing.assert_allclose(glob, full.global_emb.numpy(), atol=2e-4, rtol=1e-3)
        assert (cache.first_column, cache.end_column) == (start, start + 20)


def test_the_rope_angles_are_those_of_the_model_for_the_first_columns(model_file):
    model = load_model(model_file)
    spec = TorchBackend(model_file).cache_spec
    cos, sin = rope_angles(np.array([0]), 5, spec.head_dim, spec.rope_base)
    tok = torch.arange(20)[None]
    ref_cos, ref_sin = model.audio.rotary.angles(tok // 4, tok % 4)
    np.testing.assert_allclose(cos, ref_cos[:, 0].numpy(), atol=1e-6)
    np.testing.assert_allclose(sin, ref_sin[:, 0].numpy(), atol=1e-6)


@pytest.mark.parametrize("precision,min_cos", [("fp32", 0.9999), ("int8", 0.99)])
def test_onnx_runtime_agrees_with_torch_hop_after_hop_while_the_cache_slides(model_file, export_dir, precision, min_cos):
    hops = [3, 3, 4, 3, 3, 3, 4, 3]  # a 0.5 s hop in 160 ms columns; 26 columns through a 12-column cache
    mel = mel_columns(sum(hops), 1)
    ref_c, ref_g = stream(TorchBackend(model_file), mel, hops, max_columns=12)
    got_c, got_g = stream(OnnxBackend(export_dir, threads=2, precision=precision), mel, hops, max_columns=12)
    for rc, gc in zip(ref_c, got_c):
        assert cosine_rows(rc, gc).min() >= min_cos
    assert cosine_rows(np.stack(ref_g), np.stack(got_g)).min() >= min_cos


def test_a_batch_of_streams_gives_what_each_stream_gives_alone(export_dir):
    backend = OnnxBackend(export_dir, threads=2)
    past, new = [5, 0, 2], [3, 4, 1]  # cached and new columns per stream
    alone, caches = [], []
    for i, (p, n) in enumerate(zip(past, new)):
        mel = mel_columns(p + n, 10 + i)
        cache, twin = StreamCache(8, backend.cache_spec), StreamCache(8, backend.cache_spec)
        for c in (cache, twin):
            c.clear(100 * i)
            if p:
                encode_new_columns(backend, mel[:, :, : p * COLS], np.array([p]), [c])
        caches.append((cache, mel[:, :, p * COLS :]))
        c, g = encode_new_columns(backend, mel[:, :, p * COLS :], np.array([n]), [twin])
        alone.append((c[0, :n], g[0], [v.copy() for v in twin.views()]))
    batch_mel = np.zeros((3, 64, max(new) * COLS), np.float32)
    for i, (_, m) in enumerate(caches):
        batch_mel[i, :, : m.shape[-1]] = m[0]
    cols, globs = encode_new_columns(backend, batch_mel, np.array(new), [c for c, _ in caches])
    for i, (c_alone, g_alone, cache_alone) in enumerate(alone):
        assert cosine_rows(cols[i, : new[i]], c_alone).min() > 0.99999
        assert cosine_rows(globs[i][None], g_alone[None]).min() > 0.99999
        for got, ref in zip(caches[i][0].views(), cache_alone):
            np.testing.assert_allclose(got, ref, atol=1e-4)


SPEC = CacheSpec(local_entry=2, global_groups=1, heads=1, head_dim=3, local_columns=3, rope_base=10000.0)


def global_tokens(values: np.ndarray) -> np.ndarray:
    """(tokens, 3) -> the global cache's (G=1, 2, H=1, tokens, hd=3) layout (keys = values here)."""
    return np.broadcast_to(values[None, None, None], (1, 2, 1, *values.shape))


def test_the_cache_keeps_the_newest_columns_as_one_view():
    cache = StreamCache(max_columns=5, spec=SPEC)
    glob = np.arange(4 * 13 * 3, dtype=np.float32).reshape(4 * 13, 3)  # 13 columns of 4 tokens
    local = -np.arange(4 * 13 * 2, dtype=np.float32).reshape(4 * 13, 2)
    for lo, hi in ((0, 2), (2, 6), (6, 7), (7, 13)):
        cache.append(local[4 * lo : 4 * hi], global_tokens(glob[4 * lo : 4 * hi]))
    assert (cache.first_column, cache.end_column, cache.columns) == (8, 13, 5)
    got_local, got_global = cache.views()
    np.testing.assert_array_equal(got_global[0, 1, 0], glob[4 * 8 :])  # the whole context
    np.testing.assert_array_equal(got_local, local[4 * 10 :])  # what a local block can reach
    cache.clear(100)
    assert (cache.first_column, cache.end_column, cache.views()[1].shape) == (100, 100, (1, 2, 1, 0, 3))


def test_a_batch_left_pads_shorter_caches_and_masks_the_padding():
    a, b = StreamCache(4, SPEC), StreamCache(4, SPEC)
    a.append(np.ones((8, 2), np.float32), global_tokens(np.ones((8, 3), np.float32)))
    past_local, local_valid, past_global, global_valid = batch_inputs([a, b])
    assert past_global.shape == (2, 1, 2, 1, 8, 3) and global_valid.tolist() == [[True] * 2, [False] * 2]
    assert past_local.shape == (2, 8, 2) and local_valid.tolist() == [[True] * 2, [False] * 2]
    _, _, past_global, global_valid = batch_inputs([b])
    assert past_global.shape == (1, 1, 2, 1, 4, 3) and not global_valid.any()  # one masked column, never a 0-length axis


def test_lookback_needs_the_window_encoder():
    with pytest.raises(ConfigError, match="detector.lookback_s.*context.encoder"):
        parse_config("prompts: [{label: a, text: a dog}]\ndetector: {lookback_s: 0.32}\n", "c.yaml")
    cfg = parse_config("prompts: [{label: a, text: a dog}]\ndetector: {lookback_s: 0.32}\n"
                           "context: {encoder: window}\n", "c.yaml")
    assert cfg.context.encoder == "window"
