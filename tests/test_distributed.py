"""Distributed training (docs/behaviour.md §10): 2 gloo processes on CPU give the gradients of 1
process.

The key acceptance point: with features gathered by ``gather_with_grad`` and DDP averaging, the
parameter gradients of a 2-process step equal those of one process running the whole global
batch. The reference's gather (backward keeps only the local slice) is run too, to show what the
test catches: its CLIP gradients come out halved.
"""
import os
import socket
from functools import partial

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from tvr.models.config import GAREConfig
from tvr.models.gare import GARE
from tvr.models.pretrained import load_clip
from tvr.training.distributed import (check_batch_size, cleanup, gather_rows, gather_with_grad,
                                      init_distributed, share_sizes)

GLOBAL_BATCH, FRAMES, WORDS = 8, 3, 10
WORLD = 2
KEPT = (4, 2)  # items each rank keeps when --skip_bad_videos drops 2 of rank 1's 4


def make_model() -> GARE:
    torch.manual_seed(0)
    return GARE(load_clip("tiny"), GAREConfig(agg_module="meanP"))


def make_batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.zeros(GLOBAL_BATCH, WORDS, dtype=torch.long)
    text_mask = torch.zeros_like(ids)
    for i in range(GLOBAL_BATCH):
        n = 3 + i % (WORDS - 3)
        ids[i, 0], ids[i, n - 1] = 49406, 49407
        ids[i, 1:n - 1] = torch.randint(1, 49000, (n - 2,), generator=g)
        text_mask[i, :n] = 1
    video = torch.randn(GLOBAL_BATCH, FRAMES, 3, 32, 32, generator=g)
    video_mask = torch.ones(GLOBAL_BATCH, FRAMES, dtype=torch.long)
    video_mask[1, 2:] = video_mask[6, 1:] = 0
    video[video_mask == 0] = 0
    return ids, text_mask, video, video_mask


class SliceGather(torch.autograd.Function):
    """The reference's AllGather: backward returns only this rank's slice of the gradient."""

    @staticmethod
    def forward(ctx, tensor):
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        ctx.rank, ctx.size = dist.get_rank(), tensor.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        return grad[ctx.rank * ctx.size:(ctx.rank + 1) * ctx.size]


def gradients(model: nn.Module, batch, gather=None) -> dict[str, torch.Tensor]:
    """Loss and parameter gradients of one training step (Psi's dropout seeded alike)."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(7)
    loss = model(*batch, gather=gather)["loss"] if gather else model(*batch)["loss"]
    loss.backward()
    inner = getattr(model, "module", model)
    grads = {n: p.grad.clone() for n, p in inner.named_parameters() if p.grad is not None}
    return {"loss": loss.detach(), **grads}


def worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(WORLD),
                      RANK=str(rank))
    if rank == 0:  # torchrun: LOCAL_RANK in the environment
        os.environ["LOCAL_RANK"] = "0"
        context = init_distributed(device="cpu")
    else:  # legacy torch.distributed.launch: the --local_rank argument
        os.environ.pop("LOCAL_RANK", None)
        context = init_distributed(local_rank=rank, device="cpu")
    try:
        assert (context.rank, context.world_size, context.local_rank) == (rank, WORLD, rank)
        assert context.is_main == (rank == 0) and context.distributed
        share = check_batch_size(GLOBAL_BATCH, context.world_size)
        local = [t[rank * share:(rank + 1) * share] for t in make_batch()]
        model = nn.parallel.DistributedDataParallel(make_model())
        results = {"fixed": gradients(model, local, gather_with_grad),
                   "reference": gradients(model, local, SliceGather.apply)}
        kept = [t[:KEPT[rank]] for t in local]
        sizes = share_sizes(KEPT[rank], context.device)
        assert sizes == list(KEPT)
        results["unequal"] = gradients(model, kept, partial(gather_rows, sizes=sizes))
        if context.is_main:
            torch.save(results, out)
    finally:
        cleanup()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_give_the_gradients_of_one(tmp_path):
    out = str(tmp_path / "grads.pt")
    mp.spawn(worker, args=(free_port(), out), nprocs=WORLD, join=True)
    distributed = torch.load(out, weights_only=True)
    torch.set_num_threads(1)
    single = gradients(make_model(), make_batch())
    fixed, reference = distributed["fixed"], distributed["reference"]

    assert sorted(fixed) == sorted(single)
    assert len(single) == 1 + sum(p.requires_grad for p in make_model().parameters())
    for name, expected in single.items():
        assert expected.abs().max() > 0 or name.endswith("bias"), name
        torch.testing.assert_close(fixed[name], expected, atol=1e-5, rtol=0, msg=name)

    # Shares of unequal sizes (skipped videos): the gradients of one process on the kept items.
    kept = [torch.cat([t[:KEPT[0]], t[GLOBAL_BATCH // WORLD:][:KEPT[1]]]) for t in make_batch()]
    single_kept = gradients(make_model(), kept)
    for name, expected in single_kept.items():
        torch.testing.assert_close(distributed["unequal"][name], expected, atol=1e-5, rtol=0,
                                   msg=name)

    # The reference's gather: encoders get 1/world_size of their gradient, Psi all of it.
    clip_text = "clip.transformer.resblocks.0.mlp.c_fc.weight"
    torch.testing.assert_close(reference[clip_text], single[clip_text] / WORLD,
                               atol=1e-5, rtol=0)
    psi = "similarity.psi.q_proj.weight"
    torch.testing.assert_close(reference[psi], single[psi], atol=1e-5, rtol=0)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(reference[clip_text], single[clip_text], atol=1e-5, rtol=0)


def test_single_process_without_a_launcher(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    context = init_distributed(device="cpu")
    assert (context.rank, context.world_size, context.local_rank) == (0, 1, 0)
    assert context.is_main and not context.distributed and context.device == torch.device("cpu")
    assert not dist.is_initialized()
    x = torch.randn(3, 2, requires_grad=True)
    assert gather_with_grad(x) is x


def test_check_batch_size():
    assert check_batch_size(128, 4) == 32
    with pytest.raises(ValueError, match=r"--batch_size 130 is the GLOBAL batch.*multiple of 4 "
                                         r"\(e\.g\. 128 or 132\)"):
        check_batch_size(130, 4)
    with pytest.raises(ValueError, match="--batch_size_val 3 .* multiple of 8"):
        check_batch_size(3, 8, flag="--batch_size_val")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a CPU-only machine")
def test_device_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(RuntimeError, match="--device cuda: this torch build sees no CUDA"):
        init_distributed(device="cuda")
