"""The GARE model: temporal aggregation, the public surface, ablation flags, overfitting a batch."""
import pytest
import torch
import torch.nn.functional as F

from tvr.losses.gare_terms import relaxed_vib_kl
from tvr.models.clip import CLIP
from tvr.models.config import CLIP_CONFIGS, CLIPConfig
from tvr.models.gare import GARE, TextFeatures
from tvr.models.temporal import SeqLSTM, SeqTransf, build_temporal
from tvr.cli.flags import build_parser, run_config
from tvr.cli.retrieval import parse_args

SCORE_FLAGS = [
    ["--agg_module", "seqLSTM"], ["--agg_module", "meanP"], ["--num_hidden_layers", "2"],
    ["--temp", "1.0"], ["--delta_side", "video"], ["--psi_query", "text"], ["--gap_sign", "-1"],
    ["--psi_context", "words"], ["--no_delta"], ["--normalize_delta"],
]
LOSS_FLAGS = [
    ["--beta", "0"], ["--kl_prior_std", "2.0"], ["--kl_anchor", "text"], ["--lambda_dir", "0"],
    ["--alpha", "5.0"], ["--lambda_epsilon", "0"], ["--lambda_lower", "1e-6"], ["--ncl"],
    ["--dir_loss", "orthogonal"],
]


def make_model(flags=(), clip_config=CLIP_CONFIGS["tiny"], seed=0) -> GARE:
    torch.manual_seed(seed)
    return GARE(CLIP(clip_config), gare_config([*flags, "--anno_path", "a", "--video_path", "v"]))


def gare_config(argv):
    """The GAREConfig that main_retrieval.py builds for ``argv``."""
    return run_config(parse_args(list(argv))).model.gare


def make_batch(batch=8, frames=4, length=12, image_size=32, seed=1):
    """Random clips (two with padded tails) and captions of different lengths."""
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(batch, frames, 3, image_size, image_size, generator=g)
    video_mask = torch.ones(batch, frames, dtype=torch.long)
    video_mask[1, 2:] = 0
    video_mask[batch - 1, 1:] = 0
    video[video_mask == 0] = 0  # zero-padded, as the data pipeline delivers
    ids = torch.zeros(batch, length, dtype=torch.long)
    text_mask = torch.zeros(batch, length, dtype=torch.long)
    for i in range(batch):
        n = 3 + i % (length - 3)
        ids[i, 0], ids[i, n - 1] = 49406, 49407
        ids[i, 1:n - 1] = torch.randint(1, 49000, (n - 2,), generator=g)
        text_mask[i, :n] = 1
    return ids, text_mask, video, video_mask


def encode(model, batch):
    ids, text_mask, video, video_mask = batch
    return model.encode_text(ids, text_mask), model.encode_video(video, video_mask)


def test_seqtransf_starts_as_the_first_clip_text_blocks():
    clip = CLIP(CLIP_CONFIGS["tiny"])
    scratch = build_temporal("seqTransf", clip).frame_position_embeddings.weight
    assert not torch.equal(scratch, clip.positional_embedding)  # nothing learned to copy
    assert 0.9 < scratch.std().item() < 1.1  # nn.Embedding's N(0, 1): frame order visible
    clip.pretrained = True  # as clip_from_state_dict leaves it
    temporal = build_temporal("seqTransf", clip, num_hidden_layers=3)
    assert torch.equal(temporal.frame_position_embeddings.weight, clip.positional_embedding)
    assert len(temporal.transformer.resblocks) == 3
    for ours, theirs in zip(temporal.transformer.resblocks, clip.transformer.resblocks):
        for (name, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items()):
            assert torch.equal(a, b), name
    assert temporal.transformer.resblocks[0].attn.in_proj_weight.data_ptr() != \
        clip.transformer.resblocks[0].attn.in_proj_weight.data_ptr()  # a copy, not shared
    with pytest.raises(ValueError, match="lower --num_hidden_layers"):
        build_temporal("seqTransf", clip, num_hidden_layers=5)


def test_seqtransf_layernorms_use_the_references_eps():
    """The reference's temporal transformer normalises with a TF-style LayerNorm,
    (x - mean) / sqrt(var + 1e-12); CLIP's own blocks keep 1e-5. A transcription of its block
    (written here) with that LayerNorm must give seqTransf's output in float64, where eps 1e-5
    differs by ~1e-5 on unit-scale inputs."""
    torch.manual_seed(0)
    clip = CLIP(CLIP_CONFIGS["tiny"])
    temporal = build_temporal("seqTransf", clip, num_hidden_layers=2).double().eval()
    norms = [m for m in temporal.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 4 and {m.eps for m in norms} == {1e-12}
    assert {m.eps for m in clip.modules() if isinstance(m, torch.nn.LayerNorm)} == {1e-5}

    def tf_layer_norm(x, norm):
        centred = x - x.mean(-1, keepdim=True)
        return norm.weight * centred / torch.sqrt(centred.square().mean(-1, keepdim=True)
                                                  + 1e-12) + norm.bias

    def reference(frames, mask):
        x = frames + temporal.frame_position_embeddings.weight[:frames.shape[1]]
        bias = (1.0 - mask[:, None, None, :].double()) * -1e6  # additive key mask
        for block in temporal.transformer.resblocks:
            h = tf_layer_norm(x, block.ln_1)
            q, k, v = F.linear(h, block.attn.in_proj_weight, block.attn.in_proj_bias).chunk(3, -1)
            heads = block.attn.heads
            q, k, v = (t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (q, k, v))
            attn = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5 + bias, dim=-1)
            x = x + block.attn.out_proj((attn @ v).transpose(1, 2).flatten(2))
            x = x + block.mlp(tf_layer_norm(x, block.ln_2))
        return x + frames

    frames = torch.randn(2, 5, 128, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    with torch.no_grad():
        ours = temporal(frames, mask)
        torch.testing.assert_close(ours, reference(frames, mask), rtol=0, atol=1e-9)
        for norm in norms:
            norm.eps = 1e-5
        assert (temporal(frames, mask) - ours).abs().max() > 1e-6  # the choice is visible


@pytest.mark.parametrize("module", [SeqTransf(128, 2, 2), SeqLSTM(128)])
def test_real_frames_do_not_see_padded_frames(module):
    frames = torch.randn(3, 6, 128)
    mask = torch.tensor([[1] * 6, [1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]])
    changed = frames.clone()
    changed[mask == 0] = torch.randn(int((mask == 0).sum()), 128)
    with torch.no_grad():
        a, b = module(frames, mask), module(changed, mask)
    real = mask.bool()
    torch.testing.assert_close(a[real], b[real])
    assert not torch.allclose(a[real], frames[real])  # it did transform them


def test_lstm_padding_follows_the_reference():
    """Inside the longest clip padded slots hold their input; beyond it, twice the input."""
    module = SeqLSTM(8)
    frames = torch.randn(2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    with torch.no_grad():
        out = module(frames, mask)
    torch.testing.assert_close(out[1, 2], frames[1, 2])
    torch.testing.assert_close(out[:, 3:], 2 * frames[:, 3:])


def test_public_surface_shapes_with_unequal_blocks():
    model = make_model().eval()
    text, video = encode(model, make_batch())
    assert text.sentence.shape == (8, 128) and text.words.shape == (8, 12, 128)
    assert video.frames.shape == (8, 4, 128)
    scores, delta = model.score(TextFeatures(*(t[:3] for t in text)), video)
    assert scores.shape == (3, 8) and delta.shape == (3, 8, 128)
    full = model.score(text, video).scores
    torch.testing.assert_close(scores, full[:3])
    chunked = model.score_in_chunks(text, video, chunk=3, over="video")
    torch.testing.assert_close(chunked, full)
    torch.testing.assert_close(model.score_in_chunks(text, video, chunk=5, over="text"), full)


def test_no_delta_is_cosine_of_text_and_pooled_video():
    model = make_model(["--no_delta"]).eval()
    assert model.similarity.psi is None
    text, video = encode(model, make_batch())
    scores, delta = model.score(text, video)
    assert delta is None
    weights = torch.einsum("ad,bkd->abk", text.sentence, video.frames).div(3.0).softmax(-1)
    pooled = torch.einsum("abk,bkd->abd", weights * video.mask[None], video.frames)
    expected = F.cosine_similarity(text.sentence[:, None], pooled, dim=-1)
    torch.testing.assert_close(scores, expected)
    assert set(model.loss(text, video)) == {"nce", "loss"}


def test_normalized_delta_is_what_the_losses_see():
    """--normalize_delta: the KL is taken of the unit-norm Δ that the scores use, and the trust
    region is inert (every radius is 1, so Var_b(r) = 0)."""
    model = make_model(["--normalize_delta"]).eval()
    text, video = encode(model, make_batch())
    with torch.no_grad():
        delta = model.score(text, video).delta
        out = model.loss(text, video)
    torch.testing.assert_close(delta.norm(dim=-1), torch.ones(delta.shape[:2]))
    torch.testing.assert_close(out["kl"], relaxed_vib_kl(delta, 1.0, "video"))
    assert abs(out["eps"].item()) < 1e-10


def _shared_weights(model: GARE, reference: GARE) -> GARE:
    own = model.state_dict()
    own.update({k: v for k, v in reference.state_dict().items()
                if torch.is_tensor(v) and k in own and own[k].shape == v.shape})
    model.load_state_dict(own)
    return model.eval()


@pytest.mark.parametrize("flags", SCORE_FLAGS + LOSS_FLAGS, ids=" ".join)
def test_every_ablation_flag_changes_the_computation(flags):
    default = make_model().eval()
    ablated = _shared_weights(make_model(flags, seed=1), default)
    batch = make_batch()
    with torch.no_grad():
        base_text, base_video = encode(default, batch)
        text, video = encode(ablated, batch)
        if flags in SCORE_FLAGS:
            assert not torch.allclose(ablated.score(text, video).scores,
                                      default.score(base_text, base_video).scores)
        else:
            torch.testing.assert_close(ablated.score(text, video).scores,
                                       default.score(base_text, base_video).scores)
            # exact comparison: some terms are small (0.01 x 1e-3) next to the InfoNCE
            assert ablated.loss(text, video)["loss"].item() != \
                default.loss(base_text, base_video)["loss"].item()


@pytest.mark.parametrize("width", [512, 768], ids=["ViT-B/32 width", "ViT-L/14 width"])
def test_ablations_run_at_real_widths(width):
    """Real embedding widths (text tower as wide as ViT-B/32's or ViT-L/14's), shallow towers."""
    clip_config = CLIPConfig(width, 32, 16, 64, 1, width, 2)
    batch = make_batch(batch=3, frames=3, length=8)
    for flags in [[]] + SCORE_FLAGS[:2] + SCORE_FLAGS[4:] + [["--ncl"]]:
        flags = flags + ["--num_hidden_layers", "2"]
        model = make_model(flags, clip_config)
        out = model(*batch)
        out["loss"].backward()
        assert torch.isfinite(out["loss"])
        assert model.clip.logit_scale.grad is not None


def test_msvd_skips_aggregation_by_default():
    data = ["--anno_path", "anns", "--video_path", "videos"]
    assert gare_config(["--datatype", "msvd", *data]).agg_module == "None"
    assert gare_config(["--recipe", "msvd", *data]).agg_module == "None"
    flags = ["--datatype", "msvd", "--agg_module", "seqLSTM", *data]
    assert gare_config(flags).agg_module == "seqLSTM"
    assert gare_config(data).agg_module == "seqTransf"


def test_help_documents_every_switch():
    text = build_parser().format_help()
    for flag in {f[0] for f in SCORE_FLAGS + LOSS_FLAGS} | {"--ncl_tau", "--ncl_iters", "--ncl_queue",
                                                          "--psi_dropout", "--clip_path"}:
        assert flag in text, flag


@pytest.mark.parametrize("flags", [[], ["--ncl", "--ncl_queue", "16"]], ids=["default", "ncl"])
def test_overfits_one_fixed_batch(flags):
    """A fixed batch of 8 random clips: the contrastive loss falls to <= 10% of its first value
    and text-to-video R@1 on the batch reaches 100% within 200 steps."""
    model = make_model(flags)
    batch = make_batch()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-4)
    first = None
    for step in range(200):
        out = model(*batch)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        first = out["nce"].item() if first is None else first
        if step % 10 == 9:
            with torch.no_grad():
                scores = model.eval().score(*encode(model, batch)).scores
            model.train()
            recall = (scores.argmax(dim=1) == torch.arange(8)).float().mean().item()
            if out["nce"].item() <= 0.1 * first and recall == 1.0:
                break
    assert out["nce"].item() <= 0.1 * first, (first, out["nce"].item())
    assert recall == 1.0
    if flags:
        assert len(model.text_queue) == 16 and len(model.video_queue) == 16
        restored = make_model(flags, seed=5)
        restored.load_state_dict(model.state_dict())  # the queues travel with the weights
        for ours, theirs in [(restored.text_queue, model.text_queue),
                             (restored.video_queue, model.video_queue)]:
            assert all(torch.equal(a, b) for a, b in zip(ours.contents(), theirs.contents()))
