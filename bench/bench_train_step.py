"""Training-step time: the GARE similarity + losses, reference loss formulation vs this project's.

"reference" writes the losses as the reference implementation does (tvr/models/modeling.py):
the relaxed-VIB KL through torch.distributions (Independent Normal, kl_divergence), the
direction-diversity term as a Python loop over the texts, the trust-region term with a Python
``if`` on the loss value. "vectorised" is :func:`tvr.losses.gare_terms.gare_loss`. Both use the
same similarity module (training mode, dropout on) and give the same loss (checked). Times are
forward + backward, best of ``--repeats``, for:

- ``losses``: the loss terms alone on a given (B, B, d) Δ and (B, B) score matrix;
- ``similarity+losses``: the GARE similarity from (B, d) texts and (B, F, d) frames, then the losses;
- ``full step`` (``--full``): the trainer's own step, ``Trainer.train_step``
  (tvr/training/trainer.py) of a Trainer built from main_retrieval.py's flags with
  ``--base_encoder --arch`` (random weights): CLIP encoders + seqTransf + similarity + losses
  from pixels and token ids, backward, global clip, BertAdam, logit clamp, on one synthetic
  batch that a DeviceLoader moved to the device (bench/trainer_steps.py). For "reference" the
  loss function that ``GARE.loss`` calls is swapped for the reference's formulation while it is
  timed. Each formulation starts from the same weights and the printed loss is its first
  step's (BertAdam's first update has learning rate 0, so the timed steps are alike too).
  Encoders in fp32 (``--precision fp32``); ``--autocast-bf16`` runs the step under bf16
  autocast (``--precision bf16``), which gare.py leaves for the similarity and losses (they
  stay fp32); fp16 is never used on a CPU.

    python -m bench.bench_train_step --batches 32 64 128 --threads 1 [--full]
"""
from __future__ import annotations

import argparse
import copy
import os
import time
from typing import Optional, Sequence
from unittest import mock

import torch
import torch.nn.functional as F
from torch.distributions import Independent, Normal, kl_divergence

from bench.trainer_steps import TrainStep, bench_trainer, resident, synthetic_pairs
from tvr.losses.config import GARELossWeights
from tvr.losses.contrastive import symmetric_info_nce
from tvr.losses.gare_terms import gare_loss
from tvr.models import gare as gare_model
from tvr.models.config import SimilarityConfig
from tvr.models.similarity import GapAwareSimilarity
from tvr.training.trainer import Trainer

WEIGHTS = GARELossWeights()


def reference_loss(scores: torch.Tensor, delta: torch.Tensor, logit_scale: torch.Tensor,
                   weights: GARELossWeights, biases=None) -> dict[str, torch.Tensor]:
    """The reference's formulation, term by term, in :func:`gare_loss`'s signature (its total
    equals gare_loss's; the reference has no NCL biases)."""
    if biases is not None:
        raise ValueError("the reference formulation has no NCL biases")
    nce = symmetric_info_nce(scores, logit_scale)
    mu, sigma = delta.mean(dim=0), delta.std(dim=0) + 1e-6
    kl = kl_divergence(Independent(Normal(mu, sigma), 1),
                       Independent(Normal(torch.zeros_like(mu), torch.ones_like(sigma)), 1)).mean()
    z = F.normalize(delta, dim=2)
    direction = 0.0
    for i in range(delta.shape[0]):
        direction = direction + torch.log(torch.exp(-weights.alpha * (1 - z[i] @ z[i].T)).mean() + 1e-8)
    direction = direction / delta.shape[0]
    radius = -delta.norm(p=2, dim=2).var(dim=1).mean()
    radius = radius if radius >= -weights.lambda_lower else 0
    return {"loss": nce + weights.beta * kl + weights.lambda_dir * direction
            + weights.lambda_epsilon * radius}


LOSSES = {"reference": reference_loss, "vectorised": gare_loss}


def best_time(step, repeats: int) -> tuple[float, float]:
    """(best seconds of ``repeats`` calls, loss value of the untimed first call) of ``step()``
    (``.item()`` synchronises)."""
    value, best = step(), float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - start)
    return best, value


def similarity_rows(batch: int, dim: int, frames: int, repeats: int, device: str) -> list[str]:
    torch.manual_seed(0)
    model = GapAwareSimilarity(SimilarityConfig(dim=dim)).to(device).train()
    text = torch.randn(batch, dim, device=device, requires_grad=True)
    video = torch.randn(batch, frames, dim, device=device, requires_grad=True)
    mask = torch.ones(batch, frames, device=device)
    mask[batch // 2:, frames // 2:] = 0
    logit_scale = torch.tensor(4.6, device=device, requires_grad=True)
    with torch.no_grad():
        fixed_scores, fixed_delta = model(text, video, mask)
    rows = []
    for name, losses in LOSSES.items():
        def loss_only():
            delta = fixed_delta.clone().requires_grad_()
            loss = losses(fixed_scores.clone().requires_grad_(), delta, logit_scale, WEIGHTS)["loss"]
            loss.backward()
            return loss.item()

        def with_similarity():
            torch.manual_seed(1)                       # same dropout masks for both formulations
            model.zero_grad(set_to_none=True)
            scores, delta = model(text, video, mask)
            loss = losses(scores, delta, logit_scale, WEIGHTS)["loss"]
            loss.backward()
            return loss.item()

        (t_loss, v_loss), (t_all, v_all) = best_time(loss_only, repeats), best_time(with_similarity, repeats)
        rows.append((name, t_loss, t_all, v_all))
    assert abs(rows[0][3] - rows[1][3]) < 1e-4 * max(1.0, abs(rows[0][3])), rows
    out = []
    for name, t_loss, t_all, value in rows:
        out.append(f"| {batch} | {name} | {1e3 * t_loss:.1f} | {1e3 * t_all:.0f} | {value:.5f} |")
    return out


def full_step_rows(trainer: Trainer, batch: int, frames: int, repeats: int) -> list[str]:
    """One row per loss formulation: ``Trainer.train_step`` on a B-pair batch, best of
    ``repeats``, each formulation from the trainer's initial weights."""
    data = resident(synthetic_pairs(batch, frames, 32, trainer.image_size), trainer.ctx.device)
    initial = copy.deepcopy(trainer.model.state_dict())
    out = []
    for name, losses in LOSSES.items():
        trainer.model.load_state_dict(initial)
        train_step = TrainStep(trainer, repeats + 1)

        def step():
            torch.manual_seed(2)                       # same dropout masks for both formulations
            return train_step(data)["loss"]

        with mock.patch.object(gare_model, "gare_loss", losses):
            seconds, value = best_time(step, repeats)
        out.append(f"| {batch} | {name} | {1e3 * seconds:.0f} | {value:.5f} |")
    return out


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--full", action="store_true", help="also time a full training step")
    parser.add_argument("--arch", default="tiny", help="CLIP of the full step (tiny, ViT-B/32, ...)")
    parser.add_argument("--skip-similarity", action="store_true",
                        help="only the full step (e.g. for a large --arch)")
    parser.add_argument("--autocast-bf16", action="store_true", help="bf16 autocast for the encoders")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, device {args.device}, threads {args.threads}, "
          f"load {os.getloadavg()[0]:.2f}, d = {args.dim}, F = {args.frames}\n")
    if not args.skip_similarity:
        print("| B | losses | losses only, fwd+bwd ms | similarity+losses, fwd+bwd ms | loss |\n"
              "|---|---|---|---|---|")
        for batch in args.batches:
            print("\n".join(similarity_rows(batch, args.dim, args.frames, args.repeats,
                                             args.device)), flush=True)
    if args.full:
        print(f"\nfull step, {args.arch} CLIP, F = {args.frames}, "
              f"encoders {'bf16 autocast' if args.autocast_bf16 else 'fp32'}\n")
        print("| B | losses | step ms | loss |\n|---|---|---|---|")
        precision = "bf16" if args.autocast_bf16 else "fp32"
        with bench_trainer(args.arch, args.device, ["--precision", precision,
                                                    "--max_frames", str(args.frames)]) as trainer:
            for batch in args.batches:
                print("\n".join(full_step_rows(trainer, batch, args.frames, args.repeats)),
                      flush=True)


if __name__ == "__main__":
    main()
