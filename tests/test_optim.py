"""BertAdam, its warmup_cosine schedule, parameter groups and the logit-scale clamp
(docs/behaviour.md §9)."""
import io
import math

import pytest
import torch
from torch import nn

from tvr.models.gare import GARE
from tvr.models.pretrained import load_clip
from tvr.training.optim import (BertAdam, build_optimizer, clamp_logit_scale, param_groups,
                                warmup_cosine)


def transcribed_step(ref, grads, settings, states, t_total, warmup, b1=0.9, b2=0.98, e=1e-6,
                     max_grad_norm=1.0):
    """The reference update of the float64 copies ``ref``, one parameter at a time
    (docs/behaviour.md §9)."""
    for name, grad in grads.items():
        if grad is None:
            continue
        lr, wd = settings[name]
        state = states.setdefault(name, {"step": 0, "m": torch.zeros_like(ref[name]),
                                         "v": torch.zeros_like(ref[name])})
        g = grad.double()
        g = g * min(1.0, max_grad_norm / (float(g.norm()) + 1e-6))
        state["m"] = b1 * state["m"] + (1 - b1) * g
        state["v"] = b2 * state["v"] + (1 - b2) * g * g
        update = state["m"] / (state["v"].sqrt() + e)
        if wd > 0:
            update = update + wd * ref[name]
        x = state["step"] / t_total
        factor = x / warmup if x < warmup else 0.5 * (1 + math.cos(math.pi * x))
        ref[name] = ref[name] - lr * factor * update
        state["step"] += 1


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 3))
        self.bias = nn.Parameter(torch.randn(3))
        self.other = nn.Parameter(torch.randn(5))


def set_grads(model, step, g):
    """Large gradients for ``weight`` (clipped), small for ``bias``; ``other`` skips step 3."""
    model.weight.grad = 3.0 * torch.randn(4, 3, generator=g)
    model.bias.grad = 0.05 * torch.randn(3, generator=g)
    model.other.grad = None if step == 3 else torch.randn(5, generator=g)


def test_bertadam_equals_the_transcribed_formulas_through_warmup_and_decay():
    model = Toy()
    ref = {n: p.detach().double().clone() for n, p in model.named_parameters()}
    t_total, warmup = 20, 0.25
    settings = {"weight": (0.1, 0.2), "bias": (0.1, 0.0), "other": (0.03, 0.2)}
    optimizer = BertAdam([{"params": [model.weight], "weight_decay": 0.2},
                          {"params": [model.bias], "weight_decay": 0.0},
                          {"params": [model.other], "lr": 0.03}],
                         lr=0.1, t_total=t_total, warmup=warmup, weight_decay=0.2)
    g, states = torch.Generator().manual_seed(0), {}
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    for step in range(t_total):
        set_grads(model, step, g)
        grads = {n: p.grad for n, p in model.named_parameters()}
        transcribed_step(ref, grads, settings, states, t_total, warmup)
        expected_grads = {}
        for name, grad in grads.items():  # the reference's clip_grad_norm_(p, 1.0), per parameter
            if grad is not None:
                probe = torch.zeros_like(grad, requires_grad=True)
                probe.grad = grad.clone()
                torch.nn.utils.clip_grad_norm_(probe, 1.0)
                expected_grads[name] = probe.grad
        optimizer.step()
        if step == 0:  # lr 0 on the first update: nothing moves, the moments do
            for name, p in model.named_parameters():
                assert torch.equal(p, start[name]), name
            assert optimizer.state[model.weight]["next_m"].abs().sum() > 0
        assert model.weight.grad.norm() <= 1.0  # clipped in place, as the reference does
        for name, grad in expected_grads.items():
            torch.testing.assert_close(getattr(model, name).grad, grad, msg=name)
        for name, p in model.named_parameters():
            torch.testing.assert_close(p.double(), ref[name], rtol=1e-5, atol=1e-6, msg=name)
    assert optimizer.state[model.other]["step"] == t_total - 1  # skipped once, kept its count
    for name, p in model.named_parameters():
        assert (p - start[name]).abs().max() > 1e-2, name  # the comparison is not vacuous


def test_schedule_values():
    assert warmup_cosine(0.0, 0.1) == 0.0
    assert warmup_cosine(0.05, 0.1) == pytest.approx(0.5)
    assert warmup_cosine(0.1, 0.1) == pytest.approx(0.5 * (1 + math.cos(0.1 * math.pi)))
    assert warmup_cosine(0.5, 0.1) == pytest.approx(0.5)
    assert warmup_cosine(1.0, 0.1) == pytest.approx(0.0, abs=1e-12)
    p = nn.Parameter(torch.zeros(2))
    optimizer = BertAdam([p], lr=1e-4, t_total=100)
    lrs = []
    for _ in range(60):
        lrs.append(optimizer.get_lr()[0])
        p.grad = torch.ones(2)
        optimizer.step()
    assert lrs[0] == 0.0
    assert lrs[5] == pytest.approx(1e-4 * 0.5)
    assert lrs[9] == pytest.approx(1e-4 * 0.9)
    assert lrs[10] == pytest.approx(1e-4 * 0.5 * (1 + math.cos(0.1 * math.pi)))
    assert lrs[50] == pytest.approx(1e-4 * 0.5)


def test_defaults_are_the_recipe_and_t_total_is_the_run_length():
    model = Toy()
    optimizer = build_optimizer(model, lr=1e-4, coef_lr=1e-3, weight_decay=0.2, warmup=0.1,
                                steps_per_epoch=7, epochs=3)
    group = optimizer.param_groups[1]
    assert (group["b1"], group["b2"], group["e"], group["max_grad_norm"]) == (0.9, 0.98, 1e-6, 1.0)
    assert (group["schedule"], group["warmup"], group["t_total"]) == ("warmup_cosine", 0.1, 21)
    with pytest.raises(ValueError, match="t_total"):
        BertAdam(model.parameters(), lr=1e-4, t_total=0)


@pytest.fixture(scope="module")
def tiny_gare():
    torch.manual_seed(0)
    return GARE(load_clip("tiny"))


def test_param_groups_of_the_tiny_gare(tiny_gare):
    groups = param_groups(tiny_gare, lr=1e-4, coef_lr=1e-3, weight_decay=0.2)
    names = {id(p): n for n, p in tiny_gare.named_parameters()}
    grouped = {g["name"]: [names[id(p)] for p in g["params"]] for g in groups}
    assert [g["name"] for g in groups] == ["decay_clip", "decay_other", "no_decay_clip",
                                          "no_decay_other"]
    assert [len(g["params"]) for g in groups] == [46, 34, 39, 33]
    assert [g["lr"] for g in groups] == pytest.approx([1e-7, 1e-4, 1e-7, 1e-4])
    assert [g["weight_decay"] for g in groups] == [0.2, 0.2, 0.0, 0.0]
    assert all(n.startswith("clip.") for n in grouped["decay_clip"] + grouped["no_decay_clip"])
    assert not any("clip." in n for n in grouped["decay_other"] + grouped["no_decay_other"])
    assert all("bias" in n for n in grouped["no_decay_clip"] + grouped["no_decay_other"])
    for decaying in ("clip.ln_final.weight", "clip.visual.transformer.resblocks.0.ln_1.weight",
                     "clip.logit_scale", "similarity.psi.layer_norm1.weight"):
        assert any(decaying in grouped[k] for k in ("decay_clip", "decay_other")), decaying
    everything = sum(grouped.values(), [])
    assert "clip.visual.conv1.weight" not in everything  # frozen
    trainable = [n for n, p in tiny_gare.named_parameters() if p.requires_grad]
    assert sorted(everything) == sorted(trainable)


def test_clamp_logit_scale(tiny_gare):
    scale = tiny_gare.clip.logit_scale
    with torch.no_grad():
        scale.fill_(7.0)
    clamp_logit_scale(tiny_gare)
    assert scale.item() == pytest.approx(math.log(100))
    with torch.no_grad():
        scale.fill_(2.0)
    clamp_logit_scale(tiny_gare)
    assert scale.item() == 2.0


def test_state_dict_round_trip_continues_identically():
    def run(model, optimizer, g, steps):
        for step in range(steps):
            set_grads(model, step, g)
            optimizer.step()

    model = Toy()
    optimizer = BertAdam(param_groups(model, 0.1, 1.0, 0.2), lr=0.1, t_total=12)
    run(model, optimizer, torch.Generator().manual_seed(1), 5)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    restored = Toy()
    restored.load_state_dict(saved["model"])
    restored_optimizer = BertAdam(param_groups(restored, 0.5, 1.0, 0.0), lr=0.5, t_total=99)
    restored_optimizer.load_state_dict(saved["optimizer"])  # settings come back too
    assert restored_optimizer.param_groups[0]["t_total"] == 12
    run(model, optimizer, torch.Generator().manual_seed(2), 7)
    run(restored, restored_optimizer, torch.Generator().manual_seed(2), 7)
    for (name, a), b in zip(model.named_parameters(), restored.parameters()):
        assert torch.equal(a, b), name
