"""Export and runtime backends: ONNX Runtime must agree with PyTorch, the engine's path must not
import torch, and every failure to open a backend is one line (with a fallback for TensorRT).

The model is slap-tiny with seeded random weights, saved as shipped (fp16 safetensors) and
loaded back; it is exported once for the module."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import encoder.export as export_mod
from encoder.checkpoint import file_hash as checkpoint_file_hash
from encoder.checkpoint import load_model
from encoder.runtime import Backend, BackendError, open_backend
from encoder.runtime.base import AUDIO_ONNX, MANIFEST_FILE, file_hash, find_export, read_manifest
from encoder.runtime.onnx_backend import OnnxBackend
from encoder.runtime.tensorrt_backend import TensorRTBackend, check_sidecar, sidecar_path

REPO = Path(__file__).resolve().parents[1]

# (batch, frames, valid frames per clip): 1 s to 30 s, mixed lengths, padding, T not a multiple of 16
PARAM_SETS = [
    (1, 100, [100]),
    (1, 3000, [3000]),
    (2, 1000, [1000, 100]),
    (4, 1234, [1234, 1000, 517, 100]),
    (8, 3000, [3000, 2500, 1500, 1000, 750, 480, 160, 100]),
]
PROMPTS = ["a dog barking", "Glass breaking in a quiet kitchen, late at night!", "rain",
           "a very long prompt about " + "many different sounds " * 20]


def gpu_and_tensorrt() -> bool:
    return importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def model_file(cache_dir) -> Path:
    return export_mod.materialise_config("slap-tiny", cache_dir / "models" / "slap-tiny-seed0.safetensors")


@pytest.fixture(scope="module")
def torch_model(model_file):
    return load_model(model_file)


@pytest.fixture(scope="module")
def export_dir(model_file, cache_dir) -> Path:
    return export_mod.export_cached(model_file, cache_dir)


@pytest.fixture(scope="module")
def onnx_backend(export_dir) -> OnnxBackend:
    return OnnxBackend(export_dir, threads=2)


def random_batch(batch: int, frames: int, lengths: list[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    mel = np.random.default_rng(seed).standard_normal((batch, 64, frames)).astype(np.float32)
    return mel, np.array(lengths, dtype=np.int64)


@pytest.mark.parametrize("batch,frames,lengths", PARAM_SETS)
def test_audio_parity(onnx_backend, torch_model, batch, frames, lengths):
    mel, lens = random_batch(batch, frames, lengths)
    ref = export_mod.torch_audio(torch_model, mel, lens)
    got = onnx_backend.encode(mel, lens)
    assert [g.shape for g in got] == [r.shape for r in ref]
    assert got[0].dtype == np.float32 and got[1].dtype == np.bool_ and got[2].dtype == np.float32
    assert got[1].sum(1).tolist() == [n // 16 for n in lengths]
    figures = export_mod.compare_audio(ref, got)
    print(f"audio parity B={batch} T={frames}: {figures}")
    assert figures["global_min_cos"] >= 0.9999 and figures["columns_min_cos"] >= 0.9999, figures
    assert figures["global_max_abs"] < 1e-3 and figures["columns_max_abs"] < 1e-3, figures


def test_text_parity(onnx_backend, torch_model):
    ids, mask = torch_model.text.tokenize(PROMPTS)
    got_ids, got_mask = onnx_backend.text.tokenize(PROMPTS)  # the torch-free tokenizer: same ids
    np.testing.assert_array_equal(got_ids, ids.numpy())
    np.testing.assert_array_equal(got_mask, mask.numpy())
    with torch.inference_mode():
        ref = torch_model.text(ids, mask).numpy()
    got = onnx_backend.embed_text(PROMPTS)
    cos = export_mod.cosine_rows(ref, got)
    print(f"text parity: min cos {cos.min():.7f}, max abs {np.abs(ref - got).max():.2e}")
    assert got.shape == (len(PROMPTS), torch_model.cfg.audio.embed_dim) and got.dtype == np.float32
    assert cos.min() >= 0.9999


def test_manifest(export_dir, model_file, torch_model):
    m = read_manifest(export_dir)
    assert m["model_hash"] == checkpoint_file_hash(model_file) == file_hash(model_file)
    assert m["embed_dim"] == torch_model.cfg.audio.embed_dim and m["opset"] == export_mod.OPSET
    assert m["text"]["max_len"] == torch_model.cfg.text.max_len
    assert (export_dir / m["text"]["tokenizer"]).is_file()
    assert m["audio"]["inputs"]["mel"] == ["batch", 64, "frames"]
    assert m["calibration"] == pytest.approx({
        "frame_log_scale": torch_model.frame_loss.log_scale.item(),
        "frame_bias": torch_model.frame_loss.bias.item(),
        "clap_logit_scale": torch_model.clap_loss.logit_scale.item(),
    })
    assert min(v for k, v in m["parity"].items() if k.endswith("_cos") and "int8" not in k) >= export_mod.MIN_COSINE
    assert min(v for k, v in m["parity"].items() if k.endswith("_cos") and "int8" in k) >= export_mod.INT8_MIN_COSINE
    assert m["audio"]["sha256"] == file_hash(export_dir / AUDIO_ONNX)
    assert m["incremental"]["inputs"]["past_global"] == ["batch", "groups", 2, "heads", "global_tokens", "head_dim"]
    assert all((export_dir / m["incremental"][f]).is_file() for f in ("file", "int8_file"))


def test_export_cache_hit_by_hash(export_dir, model_file, cache_dir, monkeypatch, tmp_path):
    def no_export(*args, **kwargs):
        raise AssertionError("exported again although the cache holds this model's export")

    monkeypatch.setattr(export_mod, "export", no_export)
    assert export_mod.export_cached(model_file, cache_dir) == export_dir
    assert export_mod.export_cached("slap-tiny", cache_dir) == export_dir  # the same seeded weights
    other = tmp_path / "other.safetensors"
    data = bytearray(model_file.read_bytes())
    data[-1] ^= 1  # one bit of one weight
    other.write_bytes(bytes(data))
    assert find_export(other, cache_dir) is None


def test_backend_protocol_and_bad_input(onnx_backend):
    assert isinstance(onnx_backend, Backend)
    assert onnx_backend.info()["threads"] == 2
    with pytest.raises(ValueError, match="expected shape"):
        onnx_backend.encode(np.zeros((1, 40, 100), np.float32), np.array([100]))
    with pytest.raises(ValueError, match="lengths must be"):
        onnx_backend.encode(np.zeros((1, 64, 100), np.float32), np.array([8]))


def test_onnx_path_does_not_import_torch(model_file, cache_dir, export_dir):
    code = f"""
import sys
import numpy as np
from encoder.runtime import open_backend
import encoder.runtime.onnx_backend, encoder.runtime.tensorrt_backend, trt_build.build
b = open_backend("auto", {str(model_file)!r}, {str(cache_dir)!r}, threads=1)
columns, valid, emb = b.encode(np.zeros((1, 64, 100), np.float32), np.array([100]))
text = b.embed_text(["a dog barking"])
leaked = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
assert not leaked, leaked[:5]
print(b.name, columns.shape, text.shape)
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split()[0] == "onnx"


def one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert msg and "\n" not in msg, msg
    return msg


def test_bad_or_missing_model_file(tmp_path, cache_dir, capsys):
    from safetensors.torch import save_file

    with pytest.raises(BackendError) as e:
        open_backend("onnx", tmp_path / "missing.safetensors", cache_dir)
    assert "not found" in one_line_error(e)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"this is not a model")
    with pytest.raises(BackendError) as e:
        open_backend("auto", garbage, cache_dir)
    assert "safetensors" in one_line_error(e)
    no_config = tmp_path / "no_config.safetensors"
    save_file({"x": torch.zeros(2)}, str(no_config))
    with pytest.raises(BackendError) as e:
        open_backend("torch", no_config, cache_dir)
    assert "config" in one_line_error(e)
    with pytest.raises(BackendError) as e:
        open_backend("onnx", "slap-nonexistent", cache_dir)
    assert "unknown model config" in one_line_error(e)

    assert export_mod.main(["--model", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("export: ") and "\n" not in err


@pytest.mark.skipif(gpu_and_tensorrt(), reason="TensorRT and a GPU are present")
def test_tensorrt_without_gpu_is_backend_error(export_dir, tmp_path, capsys):
    with pytest.raises(BackendError) as e:
        TensorRTBackend(export_dir)
    one_line_error(e)
    from trt_build.__main__ import main as trt_build_main

    assert trt_build_main(["--onnx", str(export_dir / AUDIO_ONNX), "--out", str(tmp_path / "a.plan")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("trt_build: ") and "\n" not in err


@pytest.mark.parametrize("kind", ["auto", "tensorrt"])
def test_unusable_engine_falls_back_to_onnx(kind, model_file, cache_dir, export_dir, tmp_path, caplog):
    plan = tmp_path / "audio_encoder.plan"
    plan.write_bytes(b"not an engine")
    sidecar_path(plan).write_text(json.dumps({"gpu_name": "Some Other GPU"}))
    with caplog.at_level(logging.INFO, logger="encoder.runtime"):
        backend = open_backend(kind, model_file, cache_dir, threads=1, engine=plan)
    assert backend.name == "onnx"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "falling back to onnxruntime" in warnings[0].getMessage()


def test_auto_without_engine_picks_onnx(model_file, cache_dir, export_dir, caplog):
    assert not list(export_dir.glob("*.plan"))
    with caplog.at_level(logging.INFO, logger="encoder.runtime"):
        backend = open_backend("auto", model_file, cache_dir, threads=1)
    assert backend.name == "onnx"
    assert any("no TensorRT engine" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("field,value", [("gpu_name", "NVIDIA A10G"), ("tensorrt_version", "10.0.1"),
                                         ("onnx_hash", "0123456789abcdef"), ("model_hash", "fedcba9876543210")])
def test_sidecar_mismatch_is_one_line(tmp_path, field, value):
    expected = {"gpu_name": "NVIDIA H100 80GB HBM3", "tensorrt_version": "10.7.0",
                "onnx_hash": "d228bbea557389e1", "model_hash": "29ba30dacf88c71e"}
    plan = tmp_path / "e.plan"
    plan.write_bytes(b"plan")
    sidecar_path(plan).write_text(json.dumps(expected))
    assert check_sidecar(plan, expected)["gpu_name"] == expected["gpu_name"]
    sidecar_path(plan).write_text(json.dumps({**expected, field: value}))
    with pytest.raises(BackendError) as e:
        check_sidecar(plan, expected)
    assert field in one_line_error(e) and value in str(e.value)
    sidecar_path(plan).unlink()
    with pytest.raises(BackendError, match="sidecar not found"):
        check_sidecar(plan, expected)


@pytest.mark.gpu
@pytest.mark.parametrize("fp16,min_cos", [(False, 0.9999), (True, 0.999)])
def test_tensorrt_parity(export_dir, torch_model, tmp_path, fp16, min_cos):
    if not gpu_and_tensorrt():
        pytest.skip("needs TensorRT and a CUDA GPU")
    from trt_build.build import build_engine

    plan = build_engine(export_dir / AUDIO_ONNX, tmp_path / "audio_encoder.plan", fp16=fp16, max_batch=8)
    backend = TensorRTBackend(export_dir, engine_path=plan)
    assert backend.info()["precision"] == ("fp16" if fp16 else "fp32")
    for batch, frames, lengths in PARAM_SETS + [(2, 50, [50, 16])]:  # the last is padded up to 1 s
        mel, lens = random_batch(batch, frames, lengths)
        figures = export_mod.compare_audio(export_mod.torch_audio(torch_model, mel, lens), backend.encode(mel, lens))
        print(f"tensorrt {'fp16' if fp16 else 'fp32'} B={batch} T={frames}: {figures}")
        assert figures["global_min_cos"] >= min_cos and figures["columns_min_cos"] >= min_cos, figures
    assert (export_dir / MANIFEST_FILE).is_file()
