"""SLAP's single-stage objective, one class per term (open_clip `loss.py` style).

L = w_clap * ContrastiveLoss + w_ssl * MaskedPredictionLoss + w_cap * CaptionLoss
    + w_frame * FrameLoss + w_distill * DistillationLoss
                                     (recipe weights 1.0 / 1.0 / 0.5; frame and distill terms ours)

Every loss returns a dict of named terms so training logs each one.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.distributed.nn as dist_nn
import torch.nn as nn
import torch.nn.functional as F


def gather_features(x: torch.Tensor) -> torch.Tensor:
    """All-gather (B, E) -> (world * B, E) across ranks, keeping this rank's gradient path.

    Uses the autograd-aware all_gather, so every rank's loss back-propagates into the
    features it contributed, and the summed gradient equals the single-process gradient.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return torch.cat(dist_nn.all_gather(x), dim=0)


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class ContrastiveLoss(nn.Module):
    """Symmetric InfoNCE between global audio and text embeddings with a learned temperature.

    Each rank scores its local audio against the global text batch (and vice versa), as in
    open_clip with local_loss=True: the mean over ranks equals the single-process loss.
    """

    def __init__(self, init_temperature: float = 0.07, max_scale: float = 100.0):
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))
        self.max_log_scale = math.log(max_scale)

    def get_logits(self, audio: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """audio, text: (B, E) local; returns (B, world*B) logits for audio->text and text->audio."""
        audio, text = F.normalize(audio, dim=-1), F.normalize(text, dim=-1)
        all_audio, all_text = gather_features(audio), gather_features(text)
        scale = self.logit_scale.clamp(max=self.max_log_scale).exp()
        return scale * audio @ all_text.T, scale * text @ all_audio.T

    def get_ground_truth(self, n: int, device: torch.device) -> torch.Tensor:
        return torch.arange(n, device=device) + n * _rank()

    def forward(self, audio: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
        logits_a, logits_t = self.get_logits(audio, text)
        labels = self.get_ground_truth(audio.shape[0], audio.device)
        loss = 0.5 * (F.cross_entropy(logits_a, labels) + F.cross_entropy(logits_t, labels))
        return {"clap": loss}


class MaskedPredictionLoss(nn.Module):
    """Masked-token prediction against an EMA teacher (iBOT / DINOv2 style).

    The teacher sees every patch, the student sees 50 % of them replaced by a mask token;
    both map tokens to `n_prototypes` scores. At masked positions the student's
    distribution is trained towards the teacher's, sharpened (low temperature) and
    centred (a running mean subtracted) so it does not collapse to one prototype.
    Centering, not Sinkhorn: one buffer, no iterations, and stable at our small batches.
    """

    def __init__(
        self,
        n_prototypes: int,
        student_temp: float = 0.1,
        teacher_temp: float = 0.04,
        center_momentum: float = 0.9,
    ):
        super().__init__()
        self.student_temp, self.teacher_temp = student_temp, teacher_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(n_prototypes))

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> dict[str, torch.Tensor]:
        """student, teacher: (M, K) prototype scores at the M masked tokens."""
        if student.shape[0] == 0:
            return {"ssl": student.sum() * 0.0}
        teacher = teacher.detach()
        targets = F.softmax((teacher - self.center) / self.teacher_temp, dim=-1)
        loss = -(targets * F.log_softmax(student / self.student_temp, dim=-1)).sum(-1).mean()
        if self.training:
            self.update_center(teacher)
        return {"ssl": loss}

    @torch.no_grad()
    def update_center(self, teacher: torch.Tensor) -> None:
        total = teacher.new_tensor(float(teacher.shape[0]))
        sums = teacher.sum(0)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(sums)
            dist.all_reduce(total)
        self.center.mul_(self.center_momentum).add_(sums / total.clamp(min=1), alpha=1 - self.center_momentum)


class CaptionLoss(nn.Module):
    """Token cross-entropy of the caption decoder under teacher forcing; padding ignored."""

    def __init__(self, pad_id: int):
        super().__init__()
        self.pad_id = pad_id

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """logits: (B, L, V) predicting targets: (B, L) int64."""
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=self.pad_id)
        return {"caption": loss}


class FrameLoss(nn.Module):
    """Per-column sigmoid loss between dense audio features and prompt embeddings (FLAM-like).

    logit = scale * cos(column, prompt) + bias, both learned; the negative bias starts the
    model at "absent", which is the truth for most (column, prompt) pairs. As in SigLIP, the
    per-pair losses are summed over prompts and averaged over columns: a mean over all pairs
    would shrink the few positives' gradient by the number of prompts, and the dense features
    then barely learn to tell classes apart.
    """

    def __init__(self, init_scale: float = 10.0, init_bias: float = -5.0):
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(init_scale)))
        self.bias = nn.Parameter(torch.tensor(init_bias))

    def get_logits(self, columns: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        """columns: (B, C, E), prompts: (P, E) -> (B, C, P)."""
        cos = F.normalize(columns, dim=-1) @ F.normalize(prompts, dim=-1).T
        return self.log_scale.exp() * cos + self.bias

    def forward(
        self, columns: torch.Tensor, column_valid: torch.Tensor, prompts: torch.Tensor, labels: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """labels: (B, C, P) in {0, 1}; column_valid: (B, C) bool."""
        logits = self.get_logits(columns, prompts)
        per = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="none")
        mask = column_valid[..., None].to(per.dtype)
        return {"frame": (per * mask).sum() / mask.sum().clamp(min=1)}


class DistillationLoss(nn.Module):
    """Soft-target binary cross-entropy to a teacher's multi-label class scores (ours, not SLAP's),
    on the clip embedding and on every valid dense column.

    Summed over the teacher's classes (its few active classes carry the information, as in
    FrameLoss) and averaged over clips / columns; the targets' own entropy is subtracted, so a term
    is 0 exactly when the student reproduces the teacher and the log reads as a divergence.
    """

    @staticmethod
    def divergence(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(..., K), (..., K) -> (...)."""
        t = targets.to(logits.dtype).clamp(0.0, 1.0)
        per = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
        return (per + torch.xlogy(t, t) + torch.xlogy(1 - t, 1 - t)).sum(-1)

    def forward(
        self, clip_logits: torch.Tensor, clip_targets: torch.Tensor,
        column_logits: torch.Tensor, column_targets: torch.Tensor, column_valid: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """clip_*: (B, K); column_*: (B, C, K); column_valid: (B, C) bool."""
        clip = self.divergence(clip_logits, clip_targets).mean()
        w = column_valid.to(clip.dtype)
        col = (self.divergence(column_logits, column_targets) * w).sum() / w.sum().clamp(min=1)
        return {"distill": clip + col}
