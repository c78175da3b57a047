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
from encoder.incremental import IncrementalEncoder, entry_size
from encoder.runtime.onnx_backend import OnnxBackend
from encoder.runtime.stream_cache import StreamCache, batch_inputs, encode_new_columns
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
    cache = StreamCache(max_columns, backend.cache_entry)
    cols, globs, at = [], [], 0
    for n in hops:
        c, g = encode_new_columns(backend, mel[:, :, at * COLS : (at + n) * COLS], np.array([n]), [cache])
        cols.append(c[0, :n])
        globs.append(g[0])
        at += n
    return cols, globs


def test_one_hop_from_an_empty_cache_is_the_full_window_encoder(model_file):
    model = load_model(model_file)
    mel = torch.from_numpy(mel_columns(20, 0))
    full = model.audio(mel, torch.tensor([20 * COLS]))
    D, L = model.cfg.audio.width, model.cfg.audio.depth
    empty = torch.zeros(1, 4, entry_size(D, L))
    with torch.no_grad():
        cols, glob, new_cache = IncrementalEncoder(model.audio)(mel, torch.ones(1, 20, dtype=torch.bool), empty,
                                                                torch.zeros(1, 1, dtype=torch.bool))
    assert new_cache.shape == (1, 80, entry_size(D, L))
    torch.testing.assert_close(cols, full.columns, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(glob, full.global_emb, atol=1e-5, rtol=1e-4)


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
        cache = StreamCache(8, backend.cache_entry)
        if p:
            encode_new_columns(backend, mel[:, :, : p * COLS], np.array([p]), [cache])
        twin = StreamCache(8, backend.cache_entry)
        twin.append(cache.view().copy())
        twin.end_column = cache.end_column
        caches.append((cache, mel[:, :, p * COLS :]))
        c, g = encode_new_columns(backend, mel[:, :, p * COLS :], np.array([n]), [twin])
        alone.append((c[0, :n], g[0], twin.view().copy()))
    batch_mel = np.zeros((3, 64, max(new) * COLS), np.float32)
    for i, (_, m) in enumerate(caches):
        batch_mel[i, :, : m.shape[-1]] = m[0]
    cols, globs = encode_new_columns(backend, batch_mel, np.array(new), [c for c, _ in caches])
    for i, (c_alone, g_alone, cache_alone) in enumerate(alone):
        assert cosine_rows(cols[i, : new[i]], c_alone).min() > 0.99999
        assert cosine_rows(globs[i][None], g_alone[None]).min() > 0.99999
        np.testing.assert_allclose(caches[i][0].view(), cache_alone, atol=1e-4)


def test_the_cache_keeps_the_newest_columns_as_one_view():
    cache = StreamCache(max_columns=5, entry=3)
    entries = np.arange(4 * 13 * 3, dtype=np.float32).reshape(4 * 13, 3)  # 13 columns of 4 tokens
    for lo, hi in ((0, 2), (2, 6), (6, 7), (7, 13)):
        cache.append(entries[4 * lo : 4 * hi])
    assert (cache.first_column, cache.end_column, cache.columns) == (8, 13, 5)
    np.testing.assert_array_equal(cache.view(), entries[4 * 8 :])
    cache.clear(100)
    assert (cache.first_column, cache.end_column, cache.view().shape) == (100, 100, (0, 3))


def test_a_batch_left_pads_shorter_caches_and_masks_the_padding():
    a, b = StreamCache(4, 2), StreamCache(4, 2)
    a.append(np.ones((12, 2), np.float32))
    cache, valid = batch_inputs([a, b])
    assert cache.shape == (2, 12, 2) and valid.tolist() == [[True] * 3, [False] * 3]
    cache, valid = batch_inputs([b])
    assert cache.shape == (1, 4, 2) and not valid.any()  # one masked column: never a zero-length axis


def test_lookback_needs_the_window_encoder():
    with pytest.raises(ConfigError, match="detector.lookback_s.*context.encoder"):
        parse_config("prompts: [{label: a, text: a dog}]\ndetector: {lookback_s: 0.32}\n", "c.yaml")
    cfg = parse_config("prompts: [{label: a, text: a dog}]\ndetector: {lookback_s: 0.32}\n"
                           "context: {encoder: window}\n", "c.yaml")
    assert cfg.context.encoder == "window"
