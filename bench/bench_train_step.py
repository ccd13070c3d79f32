"""Training-step time: the GARE similarity + losses, reference loss formulation vs this project's.

"reference" writes the losses as the reference implementation does (tvr/models/modeling.py):
the relaxed-VIB KL through torch.distributions (Independent Normal, kl_divergence), the
direction-diversity term as a Python loop over the texts, the trust-region term with a Python
``if`` on the loss value. "vectorised" is :func:`tvr.losses.gare_terms.gare_loss`. Both use the
same similarity module (training mode, dropout on) and give the same loss (checked). Times are
forward + backward, best of ``--repeats``, for:

- ``losses``: the loss terms alone on a given (B, B, d) Δ and (B, B) score matrix;
- ``similarity+losses``: the GARE similarity from (B, d) texts and (B, F, d) frames, then the losses;
- ``full step`` (``--full``): the tiny CLIP backbone + seqTransf + similarity + losses, from pixels
  and token ids (the losses swapped the same way), fp32. On a CPU the similarity and losses stay
  in fp32 in this project (gare.py leaves autocast for them); ``--autocast-bf16`` wraps only the
  encoders in bf16 autocast; fp16 is never used on a CPU.

    python -m bench.bench_train_step --batches 32 64 128 --threads 1 [--full]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import time

import torch
import torch.nn.functional as F
from torch.distributions import Independent, Normal, kl_divergence

from tvr.losses.contrastive import symmetric_info_nce
from tvr.losses.gare_terms import GARELossWeights, gare_loss
from tvr.models.similarity import GapAwareSimilarity, SimilarityConfig

WEIGHTS = GARELossWeights()


def reference_losses(scores: torch.Tensor, delta: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """The reference's formulation, term by term (values equal gare_loss's)."""
    nce = symmetric_info_nce(scores, logit_scale)
    mu, sigma = delta.mean(dim=0), delta.std(dim=0) + 1e-6
    kl = kl_divergence(Independent(Normal(mu, sigma), 1),
                       Independent(Normal(torch.zeros_like(mu), torch.ones_like(sigma)), 1)).mean()
    z = F.normalize(delta, dim=2)
    direction = 0.0
    for i in range(delta.shape[0]):
        direction = direction + torch.log(torch.exp(-WEIGHTS.alpha * (1 - z[i] @ z[i].T)).mean() + 1e-8)
    direction = direction / delta.shape[0]
    radius = -delta.norm(p=2, dim=2).var(dim=1).mean()
    radius = radius if radius >= -WEIGHTS.lambda_lower else 0
    return nce + WEIGHTS.beta * kl + WEIGHTS.lambda_dir * direction + WEIGHTS.lambda_epsilon * radius


def vectorised_losses(scores, delta, logit_scale) -> torch.Tensor:
    return gare_loss(scores, delta, logit_scale, WEIGHTS)["loss"]


LOSSES = {"reference": reference_losses, "vectorised": vectorised_losses}


def best_time(step, repeats: int) -> tuple[float, float]:
    """(best seconds, loss value) of ``step()`` (forward + backward; ``.item()`` synchronises)."""
    value, best = step(), float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        value = step()
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
            loss = losses(fixed_scores.clone().requires_grad_(), delta, logit_scale)
            loss.backward()
            return loss.item()

        def with_similarity():
            torch.manual_seed(1)                       # same dropout masks for both formulations
            model.zero_grad(set_to_none=True)
            scores, delta = model(text, video, mask)
            loss = losses(scores, delta, logit_scale)
            loss.backward()
            return loss.item()

        (t_loss, v_loss), (t_all, v_all) = best_time(loss_only, repeats), best_time(with_similarity, repeats)
        rows.append((name, t_loss, t_all, v_all))
    assert abs(rows[0][3] - rows[1][3]) < 1e-4 * max(1.0, abs(rows[0][3])), rows
    out = []
    for name, t_loss, t_all, value in rows:
        out.append(f"| {batch} | {name} | {1e3 * t_loss:.1f} | {1e3 * t_all:.0f} | {value:.5f} |")
    return out


def full_step_rows(batch: int, frames: int, repeats: int, autocast: bool, device: str,
                   arch: str = "tiny") -> list[str]:
    from tvr.models.clip import CLIP, CLIP_CONFIGS
    from tvr.models.gare import GARE

    torch.manual_seed(0)
    model = GARE(CLIP(CLIP_CONFIGS[arch])).to(device).train()
    g = torch.Generator().manual_seed(1)
    size = CLIP_CONFIGS[arch].image_size
    video = torch.randn(batch, frames, 3, size, size, generator=g)
    video_mask = torch.ones(batch, frames, dtype=torch.long)
    ids = torch.randint(1, 49000, (batch, 32), generator=g)
    ids[:, 0], ids[:, 20] = 49406, 49407
    ids[:, 21:] = 0
    text_mask = (ids != 0).long()
    video, video_mask, ids, text_mask = (x.to(device) for x in (video, video_mask, ids, text_mask))
    encoders = (torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if autocast
                else contextlib.nullcontext())
    out = []
    for name, losses in LOSSES.items():
        def step():
            torch.manual_seed(2)
            model.zero_grad(set_to_none=True)
            with encoders:
                text = model.encode_text(ids, text_mask)
                features = model.encode_video(video, video_mask)
            scores, delta = model.score(text, features)
            loss = losses(scores, delta, model.clip.logit_scale)
            loss.backward()
            return loss.item()

        seconds, value = best_time(step, repeats)
        out.append(f"| {batch} | {name} | {1e3 * seconds:.0f} | {value:.5f} |")
    return out


def main() -> None:
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
    args = parser.parse_args()
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
        for batch in args.batches:
            print("\n".join(full_step_rows(batch, args.frames, args.repeats, args.autocast_bf16,
                                             args.device, args.arch)), flush=True)


if __name__ == "__main__":
    main()
