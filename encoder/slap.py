"""SLAP: audio encoder + text tower + caption decoder + EMA teacher, trained in one stage.

Named configs live in `encoder/model_configs/<name>.json` (the file stem is the name);
keys `audio_cfg`, `text_cfg`, `decoder_cfg`, `ssl_cfg`, `loss_weights` mirror the
dataclasses below. Checkpoints store `{"config": asdict(cfg), ...}` so `SLAPConfig.from_dict`
rebuilds the model.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from encoder.decoder import CaptionDecoder, DecoderConfig
from encoder.frontend import FREQ_PATCHES, PATCH_FRAMES
from encoder.losses import CaptionLoss, ContrastiveLoss, DistillationLoss, FrameLoss, MaskedPredictionLoss
from encoder.model import AudioEncoder, AudioOutput, EncoderConfig, count_params
from encoder.text import TextConfig, TextTower

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"


@dataclass
class SSLConfig:
    n_prototypes: int = 1024  # DINOv2 uses 65k for ImageNet-scale data; ours has ~10^2 classes
    head_hidden: int = 512
    head_bottleneck: int = 128
    mask_ratio: float = 0.5  # the paper: the student sees 50 % of the patches masked
    # Ours: only this fraction of each batch's clips is masked; the rest are seen whole, so the
    # contrastive and frame losses also train on unmasked input (what inference sees).
    masked_clip_fraction: float = 0.5
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    center_momentum: float = 0.9
    ema_start: float = 0.994  # teacher momentum, cosine schedule to ema_end over training
    ema_end: float = 1.0


@dataclass
class LossWeights:
    clap: float = 1.0
    ssl: float = 1.0
    caption: float = 0.5
    frame: float = 1.0  # ours: SLAP has no frame-level term
    distill: float = 0.0  # ours: YAMNet teacher scores (encoder.data.teacher); 0 = off
    # ours: the frame loss applied to the clip embedding with clip-level labels, so zero-shot
    # tagging with short prompts (not only caption retrieval) is trained on the global path; 0 = off
    clip: float = 0.0
    # ours: the online teachers' prompt-mapped scores (encoder.online_teacher) as soft targets for
    # the calibrated cosine of the global embedding and of every column; 0 = off
    text_distill: float = 0.0


@dataclass
class DistillConfig:
    """A linear head from the joint space to a teacher's class scores; training only."""

    n_classes: int = 521  # YAMNet's AudioSet ontology


@dataclass
class SLAPConfig:
    name: str = "slap-tiny"
    audio: EncoderConfig = field(default_factory=EncoderConfig)
    text: TextConfig = field(default_factory=TextConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    ssl: SSLConfig = field(default_factory=SSLConfig)
    loss_weights: LossWeights = field(default_factory=LossWeights)
    distill: DistillConfig = field(default_factory=DistillConfig)
    row_tokens: int = 1024  # packed training rows: tokens per row (~41 s of audio)

    @classmethod
    def from_dict(cls, d: dict) -> SLAPConfig:
        return cls(
            name=d.get("name", "custom"),
            audio=EncoderConfig(**d.get("audio_cfg", {})),
            text=TextConfig(**d.get("text_cfg", {})),
            decoder=DecoderConfig(**d.get("decoder_cfg", {})),
            ssl=SSLConfig(**d.get("ssl_cfg", {})),
            loss_weights=LossWeights(**d.get("loss_weights", {})),
            distill=DistillConfig(**d.get("distill_cfg", {})),
            row_tokens=d.get("row_tokens", 1024),
        )

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "audio_cfg": asdict(self.audio),
            "text_cfg": asdict(self.text),
            "decoder_cfg": asdict(self.decoder),
            "ssl_cfg": asdict(self.ssl),
            "loss_weights": asdict(self.loss_weights),
            "distill_cfg": asdict(self.distill),
            "row_tokens": self.row_tokens,
        }


def list_models() -> list[str]:
    return sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.json"))


def get_config(name_or_path: str) -> SLAPConfig:
    """A registered name (`slap-tiny`) or a path to a config JSON."""
    path = Path(name_or_path)
    if not path.suffix:
        path = MODEL_CONFIG_DIR / f"{name_or_path}.json"
        if not path.is_file():
            raise ValueError(f"unknown model config {name_or_path!r}; known: {', '.join(list_models())}")
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read model config ({e})") from None
    raw.setdefault("name", path.stem)
    try:
        return SLAPConfig.from_dict(raw)
    except TypeError as e:
        raise ValueError(f"{path}: {e}") from None


@dataclass
class Batch:
    """One training batch, as tensors (built by encoder.train's collate)."""

    mel: torch.Tensor  # (B, 64, T) float32 normalised log-mel
    lengths: torch.Tensor  # (B,) int64 valid frames
    text_ids: torch.Tensor  # (B, L) int64 caption tokens, [CLS] ... [SEP], [PAD]
    text_mask: torch.Tensor  # (B, L) int64
    prompt_ids: torch.Tensor | None = None  # (P, Lp) class prompts for the frame loss
    prompt_mask: torch.Tensor | None = None
    frame_labels: torch.Tensor | None = None  # (B, C, P) {0, 1}: prompt p sounds in column c
    # Cached text-tower features before the projection (B, 384) / (P, 384), used instead of the
    # ids when the tower is frozen below its projection (TextTower.frozen_features).
    text_feats: torch.Tensor | None = None
    prompt_feats: torch.Tensor | None = None
    # Teacher (YAMNet) class scores for the distillation term: per clip (B, K), per column (B, C, K).
    teacher_clip: torch.Tensor | None = None
    teacher_columns: torch.Tensor | None = None
    # Online teachers' targets on D vocabulary prompts: (B, D) per clip, (B, C, D) per column, with
    # the prompts as ids (D, Ld) or cached frozen features (D, 384).
    distill_clip: torch.Tensor | None = None
    distill_columns: torch.Tensor | None = None
    distill_prompt_ids: torch.Tensor | None = None
    distill_prompt_mask: torch.Tensor | None = None
    distill_prompt_feats: torch.Tensor | None = None
    # (B,) bool: the clip has corpus labels; None = all have. Unlabelled views (teacher-named
    # audio) skip the frame and clip terms, whose all-zero labels would read as "nothing sounds".
    labelled: torch.Tensor | None = None
    # (B, C) int64: the hop that first encodes each column of a view the student sees block-causally,
    # as the streaming engine encodes it (encoder.streamed.hop_grid); a row of 0s sees the whole
    # view; None = every view whole.
    column_hop: torch.Tensor | None = None


class PrototypeHead(nn.Module):
    """Tokens -> prototype scores: MLP, L2-normalised bottleneck, cosine to K prototypes."""

    def __init__(self, width: int, hidden: int, bottleneck: int, n_prototypes: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(width, hidden, bias=False), nn.GELU(), nn.Linear(hidden, bottleneck, bias=False))
        self.prototypes = nn.Linear(bottleneck, n_prototypes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (M, D) -> (M, K)."""
        return self.prototypes(F.normalize(self.mlp(x), dim=-1))


def random_token_mask(lengths: torch.Tensor, n_tokens: int, ratio: float, generator: torch.Generator | None) -> torch.Tensor:
    """(B, N) bool: exactly round(ratio * valid) of each clip's valid tokens, chosen at random."""
    valid_n = (lengths // PATCH_FRAMES) * FREQ_PATCHES  # (B,)
    scores = torch.rand(lengths.shape[0], n_tokens, generator=generator)
    idx = torch.arange(n_tokens)
    scores = torch.where(idx[None] < valid_n[:, None], scores, 2.0)  # padding never chosen
    rank = scores.argsort(1).argsort(1)
    return rank < (valid_n.float() * ratio).round().long()[:, None]


class SLAP(nn.Module):
    def __init__(self, cfg: SLAPConfig):
        super().__init__()
        self.cfg = cfg
        self.audio = AudioEncoder(cfg.audio)
        self.text = TextTower(cfg.text, cfg.audio.embed_dim)
        self.decoder = CaptionDecoder(cfg.decoder, cfg.audio.width)
        s = cfg.ssl
        self.student_head = PrototypeHead(cfg.audio.width, s.head_hidden, s.head_bottleneck, s.n_prototypes)
        self.teacher = nn.ModuleDict({"audio": copy.deepcopy(self.audio), "head": copy.deepcopy(self.student_head)})
        self.teacher.requires_grad_(False)
        self.clap_loss = ContrastiveLoss()
        self.ssl_loss = MaskedPredictionLoss(s.n_prototypes, s.student_temp, s.teacher_temp, s.center_momentum)
        self.caption_loss = CaptionLoss(self.text.pad_id)
        self.frame_loss = FrameLoss()
        self.distill_head = nn.Linear(cfg.audio.embed_dim, cfg.distill.n_classes)
        nn.init.constant_(self.distill_head.bias, -4.0)  # most teacher classes are ~0 for any clip
        self.distill_loss = DistillationLoss()

    def encode_audio(self, mel: torch.Tensor, lengths: torch.Tensor) -> AudioOutput:
        return self.audio(mel, lengths)

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.text(ids, mask)

    def forward(self, batch: Batch, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """All loss terms of one batch and their weighted sum under "loss". An SSL, caption, clip
        or distill term weighted 0 is not computed (the ablations: no SSL, no captioning), so it
        costs nothing; CLAP and frame terms always are."""
        w = asdict(self.cfg.loss_weights)
        B = batch.mel.shape[0]
        n_tokens = (batch.mel.shape[-1] // PATCH_FRAMES) * FREQ_PATCHES
        n_masked = int(round(B * self.cfg.ssl.masked_clip_fraction)) if w["ssl"] else 0
        token_mask = random_token_mask(batch.lengths, n_tokens, self.cfg.ssl.mask_ratio, generator)
        token_mask[n_masked:] = False
        student = self.audio.forward_packed(batch.mel, batch.lengths, token_mask, self.cfg.row_tokens, batch.column_hop)

        text = self.text.proj(batch.text_feats) if batch.text_feats is not None else self.text(batch.text_ids, batch.text_mask)
        terms = self.clap_loss(student.global_emb, text)

        if n_masked:
            with torch.no_grad():
                self.teacher.eval()
                t_out = self.teacher["audio"].forward_packed(batch.mel[:n_masked], batch.lengths[:n_masked], None, self.cfg.row_tokens)
                t_scores = self.teacher["head"](t_out.tokens[token_mask[:n_masked]])
            s_scores = self.student_head(student.tokens[:n_masked][token_mask[:n_masked]])
            terms |= self.ssl_loss(s_scores, t_scores)

        if w["caption"]:
            logits = self.decoder(batch.text_ids[:, :-1], student.tokens, student.token_valid)
            terms |= self.caption_loss(logits, batch.text_ids[:, 1:])

        if batch.frame_labels is not None and (batch.prompt_ids is not None or batch.prompt_feats is not None):
            if batch.prompt_feats is not None:
                prompts = self.text.proj(batch.prompt_feats)
            else:
                prompts = self.text(batch.prompt_ids, batch.prompt_mask)
            labels = batch.frame_labels[:, : student.columns.shape[1]]
            known = torch.ones(B, dtype=torch.bool, device=labels.device) if batch.labelled is None else batch.labelled
            terms |= self.frame_loss(student.columns, student.column_valid & known[:, None], prompts, labels)
            if w["clip"]:
                present = labels.amax(1, keepdim=True)  # (B, 1, P): the class sounds somewhere in the crop
                every = known[:, None]
                terms["clip"] = self.frame_loss(student.global_emb[:, None], every, prompts, present)["frame"]

        if w["distill"] and batch.teacher_clip is not None and batch.teacher_columns is not None:
            terms |= self.distill_loss(
                self.distill_logits(student.global_emb), batch.teacher_clip,
                self.distill_logits(student.columns), batch.teacher_columns[:, : student.columns.shape[1]],
                student.column_valid)

        if w["text_distill"] and batch.distill_clip is not None:
            if batch.distill_prompt_feats is not None:
                vocab = self.text.proj(batch.distill_prompt_feats)
            else:
                vocab = self.text(batch.distill_prompt_ids, batch.distill_prompt_mask)
            clip_logits = self.frame_loss.get_logits(student.global_emb[:, None], vocab)[:, 0]
            col_logits = self.frame_loss.get_logits(student.columns, vocab)
            terms["text_distill"] = self.distill_loss(
                clip_logits, batch.distill_clip, col_logits, batch.distill_columns[:, : student.columns.shape[1]],
                student.column_valid)["distill"]

        terms["loss"] = sum(w[k] * v for k, v in terms.items())
        return terms

    def distill_logits(self, emb: torch.Tensor) -> torch.Tensor:
        """(..., E) joint-space features -> (..., K) teacher-class logits, on unit-RMS input so the
        head sees the direction only (what cosine matching uses)."""
        return self.distill_head(F.normalize(emb, dim=-1) * emb.shape[-1] ** 0.5)

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """teacher <- momentum * teacher + (1 - momentum) * student."""
        for student, teacher in ((self.audio, self.teacher["audio"]), (self.student_head, self.teacher["head"])):
            for ps, pt in zip(student.parameters(), teacher.parameters()):
                pt.lerp_(ps.detach(), 1.0 - momentum)

    def param_counts(self) -> dict[str, int]:
        return {
            "audio encoder": count_params(self.audio),
            "text tower": count_params(self.text),
            "text tower (trainable)": sum(p.numel() for p in self.text.parameters() if p.requires_grad),
            "caption decoder": count_params(self.decoder),
            "ssl heads (student)": count_params(self.student_head),
        }


def create_model(name_or_path: str = "slap-tiny") -> SLAP:
    return SLAP(get_config(name_or_path))
