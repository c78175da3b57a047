"""Each loss equals a direct reference computation; the contrastive loss is the same under DDP."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from encoder.losses import CaptionLoss, ContrastiveLoss, DistillationLoss, FrameLoss, MaskedPredictionLoss

ROOT = Path(__file__).resolve().parents[1]


def test_contrastive_matches_a_direct_infonce():
    g = torch.Generator().manual_seed(0)
    a, t = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    loss = ContrastiveLoss(init_temperature=0.05)(a, t)["clap"]
    an, tn = a / a.norm(dim=1, keepdim=True), t / t.norm(dim=1, keepdim=True)
    sim = an @ tn.T / 0.05
    ref = 0.0
    for i in range(6):  # -log softmax of the diagonal, both directions
        ref += -(sim[i, i] - torch.logsumexp(sim[i], 0)) / 12
        ref += -(sim[i, i] - torch.logsumexp(sim[:, i], 0)) / 12
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)


def test_contrastive_temperature_is_learned():
    loss = ContrastiveLoss()
    assert loss.logit_scale.requires_grad
    loss(torch.randn(4, 8), torch.randn(4, 8))["clap"].backward()
    assert loss.logit_scale.grad is not None


def test_masked_prediction_matches_a_direct_cross_entropy():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 16, generator=g), torch.randn(5, 16, generator=g)
    crit = MaskedPredictionLoss(16, student_temp=0.1, teacher_temp=0.04, center_momentum=0.9)
    crit.center.fill_(0.3)
    loss = crit(s, t)["ssl"]
    p = torch.softmax((t - 0.3) / 0.04, -1)
    ref = sum(-(p[i] * torch.log_softmax(s[i] / 0.1, -1)).sum() for i in range(5)) / 5
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    # the centre moves towards the teacher's batch mean
    assert torch.allclose(crit.center, 0.9 * 0.3 + 0.1 * t.mean(0))


def test_masked_prediction_gives_no_gradient_to_the_teacher():
    s, t = torch.randn(3, 8, requires_grad=True), torch.randn(3, 8, requires_grad=True)
    MaskedPredictionLoss(8)(s, t)["ssl"].backward()
    assert s.grad is not None and t.grad is None


def test_caption_loss_ignores_padding():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 10, generator=g)
    targets = torch.tensor([[3, 4, 5, 0], [6, 0, 0, 0]])
    loss = CaptionLoss(pad_id=0)(logits, targets)["caption"]
    picks = [(0, 0, 3), (0, 1, 4), (0, 2, 5), (1, 0, 6)]
    ref = sum(-torch.log_softmax(logits[b, i], -1)[c] for b, i, c in picks) / 4
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)


def test_frame_loss_matches_a_direct_sigmoid_loss():
    g = torch.Generator().manual_seed(0)
    cols, prompts = torch.randn(2, 3, 8, generator=g), torch.randn(4, 8, generator=g)
    labels = (torch.rand(2, 3, 4, generator=g) > 0.5).float()
    valid = torch.tensor([[True, True, True], [True, False, False]])
    crit = FrameLoss(init_scale=10.0, init_bias=-5.0)
    loss = crit(cols, valid, prompts, labels)["frame"]
    ref, n = 0.0, 0
    for b in range(2):
        for c in range(3):
            if not valid[b, c]:
                continue
            for p in range(4):
                z = 10 * F.cosine_similarity(cols[b, c], prompts[p], dim=0) - 5
                y = labels[b, c, p]
                ref += -(y * math.log(torch.sigmoid(z)) + (1 - y) * math.log(1 - torch.sigmoid(z)))
                n += 1
    assert loss.item() == pytest.approx(float(ref) / (n / 4), rel=1e-4)  # summed over 4 prompts, mean over columns


@pytest.mark.slow
def test_contrastive_loss_under_torchrun_equals_single_process(tmp_path):
    out = tmp_path / "ddp.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
           str(ROOT / "tests" / "ddp_contrastive_worker.py"), str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, check=True, env=env, cwd=ROOT, timeout=180, capture_output=True)
    res = json.loads(out.read_text())

    g = torch.Generator().manual_seed(1234)
    a = torch.randn(8, 16, generator=g, requires_grad=True)
    t = torch.randn(8, 16, generator=g)
    loss = ContrastiveLoss()(a, t)["clap"]
    loss.backward()
    assert res["loss"] == pytest.approx(loss.item(), rel=1e-5)
    # each rank's feature gradient, averaged over 2 ranks as DDP does, equals the single-process one
    grad = torch.tensor(res["grad"]) / 2
    assert torch.allclose(grad, a.grad, atol=1e-6)


def test_distillation_is_zero_exactly_when_the_student_reproduces_the_teacher():
    torch.manual_seed(0)
    targets = torch.rand(3, 5, 7) * torch.randint(0, 2, (3, 5, 7))  # soft scores, many exact zeros
    valid = torch.ones(3, 5, dtype=torch.bool)
    loss = DistillationLoss()
    exact = torch.logit(targets.clamp(1e-6, 1 - 1e-6))
    assert loss(exact[:, 0], targets[:, 0], exact, targets, valid)["distill"].item() == pytest.approx(0.0, abs=1e-3)
    off = loss(torch.zeros(3, 7), targets[:, 0], torch.zeros(3, 5, 7), targets, valid)["distill"]
    assert off.item() > 1.0


def test_distillation_ignores_padded_columns():
    targets = torch.zeros(1, 4, 3)
    logits = torch.full((1, 4, 3), -20.0)
    logits[0, 3] = 20.0  # wildly wrong, but in a padded column
    valid = torch.tensor([[True, True, True, False]])
    out = DistillationLoss()(torch.full((1, 3), -20.0), targets[:, 0], logits, targets, valid)["distill"]
    assert out.item() < 1e-6
