"""Training checkpoints: exact resume, RNG states, atomic writes, weights for evaluation."""
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn

from tvr.cli.retrieval import parse_args, resolve
from tvr.models.factory import create_model
from tvr.models.gare import TextFeatures, VideoFeatures
from tvr.storage import ConfigMismatchError
from tvr.training import checkpoint as ckpt
from tvr.training.optim import BertAdam, param_groups


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Linear(8, 3))
        self.register_buffer("counter", torch.zeros(1))


def make(seed=0):
    torch.manual_seed(seed)
    model = Net()
    return model, BertAdam(param_groups(model, 0.05, 1.0, 0.2), lr=0.05, t_total=10)


def train(model, optimizer, steps):
    """Steps on batches drawn from torch's global generator (so resume must restore it)."""
    for _ in range(steps):
        x = torch.randn(4, 6)
        model.body(x).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        model.counter += 1


def draws():
    extra = torch.randn(1, device="cuda").item() if torch.cuda.is_available() else None
    return random.random(), float(np.random.rand()), np.random.randn(3).tolist(), \
        torch.rand(3).tolist(), extra


CONFIG = {"net": "Net", "widths": [6, 8, 3]}  # what a model's recorded configuration stands for
ARGS = dict(lr=0.05, output_dir=Path("/tmp/run"), batch_size=8, flags=[1, "a"])


def test_resume_continues_identically(tmp_path):
    model, optimizer = make()
    train(model, optimizer, 3)
    random.seed(5)
    np.random.seed(5)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    path = ckpt.save_checkpoint(tmp_path / ckpt.LAST, model, optimizer, config=CONFIG,
                                epoch=1, global_step=3,
                                best_metric=12.5, args=ARGS)
    after_save = draws()
    train(model, optimizer, 4)

    resumed, resumed_optimizer = make(seed=1)  # different initial weights
    state = ckpt.load_checkpoint(path, resumed, resumed_optimizer)
    assert draws() == after_save  # every generator restored
    train(resumed, resumed_optimizer, 4)
    assert state == ckpt.TrainingState(1, 3, 12.5, {"lr": 0.05, "output_dir": "/tmp/run",
                                                    "batch_size": 8, "flags": [1, "a"]})
    for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert resumed_optimizer.state[resumed.body[0].weight]["step"] == 7


def test_files_load_with_weights_only(tmp_path):
    model, optimizer = make()
    train(model, optimizer, 1)
    for path in (ckpt.save_checkpoint(tmp_path / ckpt.LAST, model, optimizer, config=CONFIG,
                                      epoch=0,
                                      global_step=1, best_metric=None, args=ARGS),
                 ckpt.save_model(tmp_path / ckpt.BEST, model, config=CONFIG, epoch=0, global_step=1,
                                 metric=3.0, args=ARGS)):
        assert isinstance(torch.load(path, weights_only=True), dict)


def test_a_crash_during_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model, optimizer = make()
    path = ckpt.save_checkpoint(tmp_path / ckpt.LAST, model, optimizer, config=CONFIG,
                                epoch=0, global_step=0,
                                best_metric=None)
    good = path.read_bytes()
    train(model, optimizer, 2)
    real_save = torch.save

    def crashing_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(path, model, optimizer, config=CONFIG,
                             epoch=0, global_step=2, best_metric=None)
    assert path.read_bytes() == good
    assert sorted(os.listdir(tmp_path)) == [ckpt.LAST]  # no temporary file left behind

    events = []  # the data is on disk (fsync) before the rename makes it the checkpoint
    monkeypatch.setattr(torch, "save", real_save)
    monkeypatch.setattr(os, "fsync", lambda fd: events.append("fsync"))
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b)))
    ckpt.save_checkpoint(path, model, optimizer, config=CONFIG,
                         epoch=0, global_step=2, best_metric=None)
    assert events[:2] == ["fsync", "replace"]
    assert ckpt.load_checkpoint(path, make()[0]).global_step == 2


KILLED_SAVE = """
import os, signal, sys, torch
from test_checkpoint import CONFIG, make
from tvr.training import checkpoint as ckpt

def killed(obj, f, *args, **kwargs):  # killed half-way through writing the file
    f.write(b"half a checkpoint")
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)

torch.save = killed
model, optimizer = make()
ckpt.save_checkpoint(sys.argv[1], model, optimizer, config=CONFIG, epoch=0, global_step=0,
                     best_metric=None)
"""


def test_a_killed_saves_temporary_file_is_removed_by_the_next_save(tmp_path):
    here = Path(__file__).parent
    killed = subprocess.Popen([sys.executable, "-c", KILLED_SAVE, str(tmp_path / ckpt.LAST)],
                              env={**os.environ,
                                   "PYTHONPATH": f"{here.parent}{os.pathsep}{here}"})
    assert killed.wait() == -signal.SIGKILL
    leftover = tmp_path / f".{ckpt.LAST}.{killed.pid}.tmp"
    assert leftover.read_bytes() == b"half a checkpoint"
    live = tmp_path / f".{ckpt.BEST}.{os.getppid()}.tmp"  # another process writing right now
    live.write_bytes(b"being written")
    model, optimizer = make()
    ckpt.save_checkpoint(tmp_path / ckpt.LAST, model, optimizer, config=CONFIG, epoch=0,
                         global_step=0, best_metric=None)
    assert sorted(os.listdir(tmp_path)) == sorted([ckpt.LAST, live.name])


def test_save_unwraps_ddp(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}",
                           rank=0, world_size=1)
    try:
        model, optimizer = make()
        wrapped = nn.parallel.DistributedDataParallel(model)
        path = ckpt.save_model(tmp_path / ckpt.BEST, wrapped, config=CONFIG,
                               epoch=2, global_step=9, metric=40.0)
    finally:
        dist.destroy_process_group()
    assert set(torch.load(path, weights_only=True)["model"]) == set(model.state_dict())


def test_load_weights_for_eval(tmp_path):
    model, optimizer = make()
    train(model, optimizer, 2)
    full = ckpt.save_checkpoint(tmp_path / ckpt.LAST, model, optimizer, config=CONFIG,
                                epoch=1, global_step=2,
                                best_metric=7.0, args=ARGS)
    best = ckpt.save_model(tmp_path / ckpt.BEST, model, config=CONFIG,
                           epoch=1, global_step=2, metric=7.0)
    bare = tmp_path / "bare.pt"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, bare)
    for path, kind in ((full, "training"), (best, "model"), (bare, "state_dict")):
        fresh = make(seed=3)[0]
        meta = ckpt.load_weights_for_eval(path, fresh)
        assert meta["kind"] == kind
        for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
            assert torch.equal(a, b), (path, name)
    assert ckpt.load_weights_for_eval(best, make()[0])["best_metric"] == 7.0
    for path in (full, best):  # every file records the model's configuration and the code
        assert ckpt.read_model_record(path) == CONFIG
        version = ckpt.load_weights_for_eval(path, make()[0])["code_version"]
        assert version == ckpt.code_version() and (version is None or len(version) >= 40)
    assert ckpt.read_model_record(bare) is None

    other = nn.Sequential(nn.Linear(6, 8))
    with pytest.raises(ValueError, match="missing keys"):
        ckpt.load_weights_for_eval(best, other)
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        ckpt.load_weights_for_eval(tmp_path / "nowhere.pt", model)
    with pytest.raises(ValueError, match="not a training checkpoint"):
        ckpt.load_checkpoint(best, model, optimizer)


def test_resume_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=ckpt.LAST):
        ckpt.resume_path("auto", tmp_path)
    model, optimizer = make()
    path = ckpt.save_checkpoint(tmp_path / ckpt.LAST, model, optimizer, config=CONFIG,
                                epoch=0, global_step=0,
                                best_metric=None)
    assert ckpt.resume_path("auto", tmp_path) == path
    assert ckpt.resume_path(tmp_path, "elsewhere") == path
    assert ckpt.resume_path(path, "elsewhere") == path


def built(argv, source=None, warn=print):
    """The model, flags and configuration that main_retrieval.py builds for ``argv`` (with
    ``--init_model source``)."""
    args = parse_args([*argv, *(["--init_model", str(source)] if source else [])])
    config = resolve(args, warn)
    model = ckpt.load_model(source, config.model)[0] if source else create_model(config.model)
    return model, args, config


def test_build_model_follows_the_record_and_warns_for_an_old_file(tmp_path):
    data = ["--anno_path", "anns", "--video_path", "videos"]
    model, _, config = built(["--base_encoder", "tiny", "--temp", "1.5", "--agg_module", "meanP",
                              "--num_hidden_layers", "2", "--video_framerate", "2", *data])
    record = ckpt.model_record(config.model, config.data.sampling, model)
    path = ckpt.save_model(tmp_path / ckpt.BEST, model, config=record,
                           epoch=0, global_step=0, metric=None)

    notes = []  # parser defaults: ViT-B/32 (no file here), temp 3, seqTransf, 1 frame/s
    rebuilt, plain, config = built(data, path, warn=notes.append)
    assert rebuilt.config == model.config and rebuilt.clip.config == model.clip.config
    assert (plain.base_encoder, plain.temp, plain.agg_module) == ("tiny", 1.5, "meanP")
    assert config.data.sampling.video_framerate == 2  # the sampling travels with the model
    assert notes == []
    weights = rebuilt.state_dict()  # the record's model took the weights
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, weights[name]) if torch.is_tensor(tensor) else \
            tensor == weights[name], name
    assert ckpt.load_model(path)[0].config == model.config  # the record alone suffices

    with pytest.raises(ConfigMismatchError, match=r"--temp 3.0 \(the checkpoint's: 1.5\); "
                                                  r"--no_delta True \(the checkpoint's: False\)"):
        built([*data, "--temp", "3", "--no_delta"], path)
    overriding = built([*data, "--temp", "3", "--override_config"], path, warn=notes.append)[0]
    assert overriding.config.similarity.temp == 3.0
    assert notes == ["overriding the checkpoint's configuration: --temp 3.0 (the checkpoint's: "
                     "1.5)"]

    old = tmp_path / "old.pt"  # written before checkpoints recorded their configuration
    torch.save({k: v for k, v in torch.load(path, weights_only=True).items() if k != "config"},
               old)
    notes = []
    legacy = built(["--base_encoder", "tiny", "--agg_module", "meanP", *data], old,
                   warn=notes.append)[0]
    assert len(notes) == 1 and "records no model configuration" in notes[0]
    assert legacy.config.similarity.temp == 3.0  # the flags are trusted
    with pytest.raises(ckpt.CheckpointError, match="records no model configuration"):
        ckpt.load_model(old)


def test_ablation_switches_travel_with_the_record_and_older_records_default(tmp_path):
    """--normalize_delta and --dir_loss are recorded: the checkpoint alone rebuilds the same
    model (same scores); a record written before they existed loads with their defaults."""
    data = ["--anno_path", "anns", "--video_path", "videos"]
    model, _, config = built(["--base_encoder", "tiny", "--agg_module", "meanP",
                              "--normalize_delta", "--dir_loss", "orthogonal", *data])
    record = ckpt.model_record(config.model, config.data.sampling, model)
    assert record["gare"]["similarity"]["normalize_delta"] is True
    assert record["gare"]["loss"]["dir_loss"] == "orthogonal"
    path = ckpt.save_model(tmp_path / ckpt.BEST, model, config=record,
                           epoch=0, global_step=0, metric=None)
    rebuilt = ckpt.load_model(path)[0]
    assert rebuilt.config == model.config
    g = torch.Generator().manual_seed(0)
    text = TextFeatures(torch.randn(3, 128, generator=g), None, torch.ones(3, 4))
    video = VideoFeatures(torch.randn(4, 2, 128, generator=g), torch.ones(4, 2))
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval().score(text, video).scores,
                                   model.eval().score(text, video).scores)

    stored = torch.load(path, weights_only=True)
    del stored["config"]["gare"]["similarity"]["normalize_delta"]
    del stored["config"]["gare"]["loss"]["dir_loss"]
    older = tmp_path / "older.pt"
    torch.save(stored, older)
    legacy = ckpt.load_model(older)[0].config
    assert legacy.similarity.normalize_delta is False and legacy.loss.dir_loss == "uniformity"
