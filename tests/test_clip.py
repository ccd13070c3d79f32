"""CLIP backbone: numerical agreement with open_clip, configuration reading, checkpoint loading."""
import os

import pytest
import torch
from open_clip.model import CLIP as OpenClipCLIP
from open_clip.model import CLIPTextCfg, CLIPVisionCfg

from tvr.models import pretrained
from tvr.models.clip import CLIP
from tvr.models.config import CLIP_CONFIGS, CLIPConfig
from tvr.models.tokenizer import ClipTokenizer

CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)
CAPTIONS = ["a man", "a woman is slicing a tomato in a kitchen with a big knife",
            "two dogs run on the beach while the sun goes down and children play " * 3, ""]


def random_clip(cfg: CLIPConfig, seed: int = 0) -> CLIP:
    """A CLIP with OpenAI-style random weights; LayerNorms and biases perturbed so they matter."""
    torch.manual_seed(seed)
    model = CLIP(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and name != "visual.class_embedding":
                p.add_(0.05 * torch.randn_like(p))
    return model


def open_clip_model(cfg: CLIPConfig, state_dict) -> OpenClipCLIP:
    vision = CLIPVisionCfg(layers=cfg.vision_layers, width=cfg.vision_width, patch_size=cfg.patch_size,
                           image_size=cfg.image_size)
    text = CLIPTextCfg(context_length=cfg.context_length, vocab_size=cfg.vocab_size,
                       width=cfg.text_width, heads=cfg.text_heads, layers=cfg.text_layers)
    model = OpenClipCLIP(cfg.embed_dim, vision, text, quick_gelu=True).eval()
    model.load_state_dict(state_dict)
    return model


def frames(n: int, size: int) -> torch.Tensor:
    """Natural-looking frames: smooth colour gradients and blobs plus mild noise, normalised."""
    g = torch.Generator().manual_seed(1)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    images = []
    for _ in range(n):
        a, b, c = torch.rand(3, 3, 1, 1, generator=g)
        blob = torch.exp(-((xs - a[0]) ** 2 + (ys - b[0]) ** 2) / 0.05)
        image = (a * xs + b * ys + c * blob).clamp(0, 1)
        image = (image + 0.03 * torch.randn(3, size, size, generator=g)).clamp(0, 1)
        images.append((image - CLIP_MEAN) / CLIP_STD)
    return torch.stack(images)


def caption_ids(max_words: int) -> torch.Tensor:
    tokenizer = ClipTokenizer()
    return torch.stack([torch.from_numpy(tokenizer.encode_caption(c, max_words)[0]) for c in CAPTIONS])


@pytest.mark.parametrize("name", ["tiny", "ViT-B/32"])
def test_embeddings_match_open_clip(name):
    cfg = CLIP_CONFIGS[name]
    ours = random_clip(cfg)
    reference = open_clip_model(cfg, ours.state_dict())
    images = frames(3, cfg.image_size)
    ids77 = caption_ids(cfg.context_length)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_image(images), reference.encode_image(images),
                                   atol=1e-5, rtol=0)
        expected = reference.encode_text(ids77)
        torch.testing.assert_close(ours.encode_text(ids77), expected, atol=1e-5, rtol=0)
        # Shorter inputs use the first L positions; the causal mask makes EOT's output the same
        # (for the captions that 32 tokens do not truncate: all but the third).
        fits = [0, 1, 3]
        torch.testing.assert_close(ours.encode_text(caption_ids(32))[fits], expected[fits],
                                   atol=1e-5, rtol=0)
    assert expected.abs().max() > 0.1  # the comparison is not between near-zero vectors


def test_return_hidden_gives_projected_states_at_every_position():
    model = random_clip(CLIP_CONFIGS["tiny"])
    ids = caption_ids(16)
    with torch.no_grad():
        sentence, hidden = model.encode_text(ids, return_hidden=True)
    assert hidden.shape == (len(CAPTIONS), 16, 128)
    torch.testing.assert_close(hidden[torch.arange(len(CAPTIONS)), ids.argmax(-1)], sentence)


def test_conv1_is_frozen_and_too_long_text_is_rejected():
    model = CLIP(CLIP_CONFIGS["tiny"])
    assert not model.visual.conv1.weight.requires_grad
    with pytest.raises(ValueError, match="exceeds the context length 77"):
        model.encode_text(torch.zeros(1, 78, dtype=torch.long))


@pytest.mark.parametrize("name,embed,vision_width,vision_heads,text_heads,grid", [
    ("ViT-B/32", 512, 768, 12, 8, 7),
    ("ViT-B/16", 512, 768, 12, 8, 14),
    ("ViT-L/14", 768, 1024, 16, 12, 16),
])
def test_architectures_read_from_state_dict_shapes(name, embed, vision_width, vision_heads,
                                                   text_heads, grid):
    with torch.device("meta"):  # shapes only: no memory for ViT-L/14's weights
        state_dict = CLIP(CLIP_CONFIGS[name]).state_dict()
        cfg = CLIPConfig.from_state_dict(state_dict)
        model = pretrained.clip_from_state_dict(state_dict)
    assert cfg == CLIP_CONFIGS[name]
    assert (cfg.embed_dim, cfg.vision_width, cfg.vision_heads, cfg.text_heads, cfg.grid_size) == (
        embed, vision_width, vision_heads, text_heads, grid)
    assert model.visual.proj.shape == (vision_width, embed)
    assert model.text_projection.shape[1] == embed


def test_non_vit_state_dict_is_rejected():
    with pytest.raises(ValueError, match="not a CLIP ViT"):
        CLIPConfig.from_state_dict({"visual.layer1.0.conv1.weight": torch.zeros(1)})


class ReleaseLikeCLIP(CLIP):
    """The structure of an OpenAI release archive: OpenAI key names plus the three integer
    tensors (input_resolution, context_length, vocab_size) that its state_dict() carries."""

    def __init__(self, cfg):
        super().__init__(cfg)
        for key, value in [("input_resolution", cfg.image_size),
                           ("context_length", cfg.context_length), ("vocab_size", cfg.vocab_size)]:
            self.register_buffer(key, torch.tensor(value))

    def forward(self, images, ids):
        return self.encode_image(images), self.encode_text(ids)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")
def test_torchscript_archive_and_plain_state_dict_load_to_identical_models(tmp_path):
    cfg = CLIP_CONFIGS["tiny"]
    torch.manual_seed(3)
    release = ReleaseLikeCLIP(cfg).eval()
    images, ids = frames(2, cfg.image_size), caption_ids(77)
    with torch.no_grad():
        traced = torch.jit.trace(release, (images, ids))
    torch.jit.save(traced, tmp_path / "ViT-B-32.pt")
    plain = {k: v for k, v in release.state_dict().items() if k not in pretrained.NON_PARAMETER_KEYS}
    torch.save(plain, tmp_path / "plain.pt")

    from_jit = pretrained.clip_from_state_dict(pretrained.read_state_dict(tmp_path / "ViT-B-32.pt"))
    from_plain = pretrained.clip_from_state_dict(pretrained.read_state_dict(tmp_path / "plain.pt"))
    assert from_jit.pretrained and from_plain.pretrained
    with torch.no_grad():
        expected = release(images, ids)
        for model in (from_jit.eval(), from_plain.eval()):
            assert torch.equal(model.encode_image(images), expected[0])
            assert torch.equal(model.encode_text(ids), expected[1])
    # the lookup finds the release file in a folder given as --clip_path
    assert pretrained.find_checkpoint("ViT-B/32", tmp_path) == tmp_path / "ViT-B-32.pt"


def test_not_a_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "ViT-B-32.pt"
    bad.write_text("not weights")
    with pytest.raises(ValueError, match="neither a TorchScript archive nor"):
        pretrained.read_state_dict(bad)


def test_missing_checkpoint_error_says_what_where_and_who_publishes(tmp_path, monkeypatch):
    monkeypatch.delenv(pretrained.ENV_VAR, raising=False)
    monkeypatch.setattr(pretrained, "PACKAGE_DIR", tmp_path / "pkg")
    with pytest.raises(pretrained.CheckpointNotFoundError) as error:
        pretrained.load_clip("ViT-B/16", clip_path=tmp_path)
    message = str(error.value)
    assert "ViT-B-16.pt" in message and "--base_encoder ViT-B/16" in message
    assert str(tmp_path / "ViT-B-16.pt") in message  # where it looked
    assert str(tmp_path / "pkg" / "ViT-B-16.pt") in message  # where to put it
    assert "--clip_path" in message and pretrained.ENV_VAR in message
    assert "openaipublic.azureedge.net/clip/models/5806e77cd80f" in message
    with pytest.raises(ValueError, match="unknown --base_encoder"):
        pretrained.find_checkpoint("RN50")


def test_lookup_order_clip_path_then_environment_then_package(tmp_path, monkeypatch):
    for folder in ("given", "env", "pkg"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "ViT-L-14.pt").touch()
    monkeypatch.setattr(pretrained, "PACKAGE_DIR", tmp_path / "pkg")
    monkeypatch.setenv(pretrained.ENV_VAR, os.fspath(tmp_path / "env"))
    find = pretrained.find_checkpoint
    assert find("ViT-L/14", tmp_path / "given" / "ViT-L-14.pt") == tmp_path / "given" / "ViT-L-14.pt"
    assert find("ViT-L/14") == tmp_path / "env" / "ViT-L-14.pt"
    monkeypatch.delenv(pretrained.ENV_VAR)
    assert find("ViT-L/14") == tmp_path / "pkg" / "ViT-L-14.pt"


def test_tiny_needs_no_checkpoint():
    model = pretrained.load_clip("tiny")
    assert model.config == CLIP_CONFIGS["tiny"]


def test_scratch_clip_image_positions_match_the_frozen_patch_embeddings():
    # N(0, 1), not OpenAI's N(0, 1/width): the frozen random conv1 gives patch embeddings of
    # per-dimension std ~1, and position must not be lost beside them (see reset_parameters)
    torch.manual_seed(0)
    clip = CLIP(CLIP_CONFIGS["tiny"])
    assert 0.9 < clip.visual.positional_embedding.std().item() < 1.1
    images = torch.randn(8, 3, 32, 32)
    patches = clip.visual.conv1(images).flatten(2)
    assert 0.5 < patches.std().item() < 2.0
