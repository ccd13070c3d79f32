"""The training and evaluation program behind main_retrieval.py (docs/behaviour.md §9-11).

One process per GPU (torchrun / torch.distributed.launch) or a single process. Each process
encodes its share of the global batch; features are all-gathered with their gradients so every
process computes the loss of the whole B x B matrix (see tvr/training/distributed.py). Rank 0
alone writes logs, TensorBoard scalars, checkpoints and metrics.

Outputs in ``--output_dir``: ``log.txt``, ``tensorboard/``, ``ckpt_last.pt`` (full state, for
``--resume``), ``ckpt_best.pt`` (best validation text-to-video R@1), ``metrics_<split>.json``
(after training also ``"noisy_pairs"``: the ``--noisy_pairs`` fraction and how many training
captions it re-assigned) and ``.md`` tables, ``curves.png``.
"""
from __future__ import annotations

import contextlib
import json
import math
import sys
import time
import dataclasses
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Optional

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from tvr.data.datasets import RetrievalDataset, SkipReport
from tvr.data.device_loader import DeviceLoader
from tvr.data.loaders import ResumableSampler, build_split
from tvr.data.noise import NoiseReport, add_noise
from tvr.data.video import VideoReadError
from tvr.evaluation.calibration import training_vocabulary
from tvr.evaluation.evaluate import evaluate, metric_variants, write_results
from tvr.evaluation.metrics import format_table
from tvr.models.factory import create_model
from tvr.models.gare import GARE
from tvr.models.tokenizer import ClipTokenizer
from tvr.training import checkpoint
from tvr.training.config import RunConfig
from tvr.training.distributed import (DistContext, barrier, check_batch_size, cleanup,
                                      gather_rows, init_distributed, share_sizes, unwrap_model)
from tvr.training.monitor import RunMonitor
from tvr.training.feature_mode import FeatureMode
from tvr.training.optim import BertAdam, build_optimizer, clamp_logit_scale
from tvr.training.rng import seed_everything
from tvr.training.sources import TowerSource, VideoSource


def autocast_for(precision: str, device: torch.device):
    """A factory of autocast contexts for ``--precision`` (auto: bf16 on capable GPUs)."""
    if precision == "auto":
        precision = ("bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported()
                     else "fp32")
    if precision == "fp32":
        return precision, contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return precision, lambda: torch.autocast(device_type=device.type, dtype=dtype)


class NonFiniteLossError(ArithmeticError):
    """A training step's loss is NaN or infinite: the run stops there."""


@dataclass
class TrainingRun:
    """A training run in progress: what it trains with and where it stands."""

    model: torch.nn.Module          # the model, wrapped in DDP on several processes
    optimizer: BertAdam
    scaler: torch.amp.GradScaler
    loader: DeviceLoader
    sampler: ResumableSampler
    items: Any                      # what carries the epoch of the augmentation draws
    steps_per_epoch: int
    epoch: int = 0
    global_step: int = 0
    best: Optional[float] = None


class Trainer:
    def __init__(self, config: RunConfig, model: Optional[GARE] = None):
        """``model``: one the caller built (a benchmark, a test), used instead of the one the
        configuration describes."""
        self.config = config
        train = config.train
        self.ctx: DistContext = init_distributed(
            config.local_rank, None if train.device == "auto" else train.device)
        seed_everything(train.seed)
        self.output_dir = Path(config.output_dir)
        self.monitor = RunMonitor(self.output_dir, enabled=self.ctx.is_main)
        self.log = self.monitor.log.info
        self.precision, self.autocast = autocast_for(train.precision, self.ctx.device)
        self.resume_from = Path(config.resume) if config.resume else None
        self.noise: Optional[NoiseReport] = None  # what --noisy_pairs did, once training began
        source = config.resume or config.init_model
        if model is not None:
            self.model = model
        elif source:
            self.model, meta = checkpoint.load_model(source, config.model)
        else:
            self.model = create_model(config.model)
        self.model.to(self.ctx.device)
        self.record = checkpoint.model_record(config.model, config.data.sampling, self.model)
        self.image_size = self.model.clip.config.image_size
        if config.init_model and not self.resume_from and model is None:
            self.log(f"weights from {config.init_model} ({meta.get('kind')}, step "
                     f"{meta.get('global_step')}, code {meta.get('code_version')})")
        self.log(f"process {self.ctx.rank}/{self.ctx.world_size} on {self.ctx.device}; "
                 f"precision {self.precision}; code {checkpoint.code_version()}; arguments: "
                 f"{json.dumps(config.arguments, sort_keys=True)}")
        self.source = self.tower_source()

    def tower_source(self) -> TowerSource:
        """Where the towers' outputs come from (tvr/training/sources.py): the one place the
        trainer knows which source a run uses."""
        if self.config.features.clip_features:
            return FeatureMode(self.config, self.model, self.ctx.device, self.autocast,
                               self.precision, self.ctx.world_size, self.log)
        return VideoSource(self.config, self.model, self.log)

    # ---------------------------------------------------------------- evaluation
    def evaluate(self, dataset: RetrievalDataset, name: str, step: int,
                 bank: Optional[RetrievalDataset] = None) -> Optional[dict]:
        evaluation, ncl_tau = self.config.eval, self.config.model.gare.ncl.tau
        # Evaluation draws nothing from the training generators (its DataLoaders would take a
        # seed from torch's): training is then independent of when and how it validates,
        # e.g. from cached features (feature mode) or not.
        with torch.random.fork_rng(devices=[]):
            results = evaluate(unwrap_model(self.model), dataset,
                               batch_size=evaluation.batch_size_val,
                               workers=self.config.data.workers, device=self.ctx.device,
                               is_main=self.ctx.is_main, autocast=self.autocast,
                               dsl_temp=evaluation.eval_dsl_temp, bank=bank,
                               bank_size=evaluation.eval_bank_size, qb_beta=evaluation.qb_beta,
                               qb_k=evaluation.qb_k, ncl_tau=ncl_tau,
                               engine=evaluation.eval_engine, log=self.monitor.log.warning,
                               encode=self.source.encode)
        barrier()
        if results is None:
            return None
        raw = results["raw"]
        if results["skipped_videos"]:
            self.log(f"{name}: {len(results['skipped_videos'])} unreadable videos left out of "
                     f"the gallery (not the full benchmark): {results['skipped_videos']}")
        engine = results["engine"]["method"]
        self.log(f"{name} ({dataset!r}, scored by the {engine} engine):\n"
                 f"{format_table(metric_variants(results))}")
        self.monitor.scalars(step, {f"{d}_R{k}": raw[d][f"R{k}"] for d in raw for k in (1, 5, 10)},
                             prefix=name)
        return results

    def write_results(self, results: dict, name: str) -> None:
        if not self.ctx.is_main:
            return
        noise = {} if self.noise is None else {"noisy_pairs": self.noise.record()}
        write_results(results, self.output_dir, name, noise)

    # ---------------------------------------------------------------- training
    def train(self, train_set: RetrievalDataset, val_set: RetrievalDataset) -> None:
        """Train for the configured epochs (from where a resumed run stopped), validating and
        writing ``ckpt_last.pt`` after each epoch."""
        run = self.prepare_training(train_set)
        self.known_tokens = self.vocabulary(train_set)
        skipped = SkipReport()
        while run.epoch < self.config.train.epochs:
            self.train_epoch(run, val_set, skipped)
            self.report_skipped(skipped, run.epoch)
            run.best = self.validate(val_set, run.model, run.epoch, run.global_step, run.best)
            self.save_last(run.model, run.optimizer, run.epoch, run.global_step, run.best)
            run.epoch += 1
        self.log(f"training done: best validation t2v R@1 {run.best}")

    def prepare_training(self, train_set: RetrievalDataset) -> TrainingRun:
        """The loader, optimiser and (distributed) model of a training run, resumed when the
        run resumes."""
        cfg, ctx = self.config.train, self.ctx
        local_batch = check_batch_size(cfg.batch_size, ctx.world_size)
        loader, sampler, items = self.source.train_loader(train_set, ctx.rank, ctx.world_size,
                                                          local_batch)
        steps_per_epoch = sampler.batches_per_epoch
        optimizer, scaler = self.optimisation(steps_per_epoch)
        model = self.model
        if ctx.distributed:
            model = DistributedDataParallel(
                model, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None)
        run = TrainingRun(model, optimizer, scaler, DeviceLoader(loader, ctx.device), sampler,
                          items, steps_per_epoch)
        if self.resume_from:
            state = checkpoint.load_checkpoint(self.resume_from, model, optimizer)
            run.global_step, run.best = state.global_step, state.best_metric
            run.epoch = run.global_step // steps_per_epoch
            self.log(f"resumed from {self.resume_from} at step {run.global_step} (epoch "
                     f"{run.epoch})")
        return run

    def vocabulary(self, train_set: RetrievalDataset) -> Optional[tuple[int, ...]]:
        """The token ids of the training captions when the text tower starts from random
        weights (tvr/evaluation/calibration.py: words it never saw mean nothing to it), else
        None."""
        if self.config.model.base_encoder != "tiny" or self.config.init_model:
            return None
        return training_vocabulary((pair.caption for pair in train_set.pairs), ClipTokenizer())

    def optimisation(self, steps_per_epoch: int) -> tuple[BertAdam, torch.amp.GradScaler]:
        """The optimiser (its schedule over the configured epochs) and the gradient scaler of
        a training run."""
        cfg = self.config.train
        optimizer = build_optimizer(self.model, cfg.lr, cfg.coef_lr, cfg.weight_decay,
                                    cfg.warmup_proportion, steps_per_epoch, cfg.epochs)
        return optimizer, torch.amp.GradScaler(enabled=self.precision == "fp16")

    def train_epoch(self, run: TrainingRun, val_set: RetrievalDataset,
                    skipped: SkipReport) -> None:
        """The rest of epoch ``run.epoch``: its batches from where the run stands, with the
        step-wise validation and saves the configuration asks for."""
        cfg, ctx = self.config.train, self.ctx
        run.sampler.set_epoch(run.epoch)
        run.items.epoch = run.epoch
        run.sampler.start_batch = run.global_step - run.epoch * run.steps_per_epoch
        run.model.train()
        progress = tqdm(run.loader, desc=f"epoch {run.epoch + 1}/{cfg.epochs}",
                        disable=not ctx.is_main, initial=run.sampler.start_batch,
                        total=run.steps_per_epoch,
                        mininterval=0.5 if sys.stderr.isatty() else 30)
        tic, updates = time.time(), 0
        for batch in progress:
            skipped.add(batch)
            run.global_step += 1
            values = self.update(run, batch)
            if values is not None:
                updates += 1
                progress.set_postfix(loss=f"{values['loss']:.4f}")
                self.log_step(run, values, tic)
            end_of_epoch = run.global_step % run.steps_per_epoch == 0
            if cfg.eval_every_steps and run.global_step % cfg.eval_every_steps == 0 \
                    and not end_of_epoch:
                run.best = self.validate(val_set, run.model, run.epoch, run.global_step, run.best)
                run.model.train()
            if end_of_epoch:
                break
            if cfg.save_every_steps and run.global_step % cfg.save_every_steps == 0:
                self.save_last(run.model, run.optimizer, run.epoch, run.global_step, run.best)
        if updates == 0 and run.sampler.start_batch < run.steps_per_epoch:
            raise VideoReadError(f"epoch {run.epoch + 1} made no update: no batch held two "
                                 f"readable videos ({len(skipped)} unreadable files, e.g. "
                                 f"{skipped.files[:3]}); check --video_path and the files")

    def update(self, run: TrainingRun, batch) -> Optional[dict[str, float]]:
        """One optimiser update on ``batch`` (recorded as the step's scalars), or None when the
        processes hold too few readable videos between them."""
        sizes = share_sizes(0 if batch.data is None else len(batch.data[0]), self.ctx.device)
        if min(sizes) == 0 or sum(sizes) < 2:
            self.log(f"step {run.global_step}: no update, too few readable videos in the batch "
                     f"({sum(sizes)} of {self.config.train.batch_size}; see the epoch's skip "
                     f"report)")
            return None
        values = self.train_step(run.model, run.optimizer, run.scaler, batch.data,
                                 partial(gather_rows, sizes=sizes))
        if not math.isfinite(values["loss"]):
            terms = ", ".join(f"{k} {v:.5g}" for k, v in values.items())
            raise NonFiniteLossError(
                f"step {run.global_step}: the loss is not finite ({terms}); training stopped, "
                f"and nothing after this step was saved to {self.output_dir}. Check the "
                f"learning rate and the temperatures (--lr, --temp, --ncl_tau)")
        self.monitor.scalars(run.global_step, values, prefix="train")
        return values

    def log_step(self, run: TrainingRun, values: dict[str, float], tic: float) -> None:
        step, cfg = run.global_step, self.config.train
        if step % cfg.n_display == 0 or step == 1:
            done = step - run.epoch * run.steps_per_epoch - run.sampler.start_batch
            self.log(f"step {step}/{run.steps_per_epoch * cfg.epochs} epoch {run.epoch + 1} "
                     + " ".join(f"{k} {v:.5g}" for k, v in values.items())
                     + f" ({(time.time() - tic) / max(1, done):.2f} s/step)")

    def train_step(self, model, optimizer, scaler, data, gather) -> dict[str, float]:
        """One update on this process' share of a global batch (``data`` on the device, as
        :class:`~tvr.data.device_loader.DeviceLoader` yields it); returns the logged values.
        With --skip_bad_videos the shares may differ in size: ``gather`` joins them."""
        inputs = self.source.inputs(data)
        with self.autocast():
            out = model(**inputs, gather=gather)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(out["loss"]).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        clamp_logit_scale(model)
        values = {k: v.item() for k, v in out.items()}
        values["lr"] = optimizer.get_lr()[1]
        values["logit_scale"] = unwrap_model(model).clip.logit_scale.exp().item()
        return values

    def validate(self, val_set, model, epoch: int, global_step: int,
                 best: Optional[float]) -> Optional[float]:
        results = self.evaluate(val_set, "val", global_step)
        if self.ctx.is_main:
            r1 = results["raw"]["t2v"]["R1"]
            if best is None or r1 >= best:
                best = r1
                checkpoint.save_model(self.output_dir / checkpoint.BEST, model,
                                      epoch=epoch, global_step=global_step, metric=r1,
                                      config=self.record, args=self.config.arguments,
                                      calibration=dataclasses.replace(
                                          results["calibration"],
                                          known_tokens=self.known_tokens).as_dict())
                self.log(f"new best validation t2v R@1 {r1:.2f} at step {global_step}")
        return best

    def save_last(self, model, optimizer, epoch: int, global_step: int, best) -> None:
        if self.ctx.is_main:
            checkpoint.save_checkpoint(self.output_dir / checkpoint.LAST, model, optimizer,
                                       epoch=epoch, global_step=global_step, best_metric=best,
                                       config=self.record, args=self.config.arguments)
        barrier()

    def report_skipped(self, skipped: SkipReport, epoch: int) -> None:
        if len(skipped):
            self.log(f"epoch {epoch + 1}: skipped {len(skipped)} unreadable videos:\n"
                     f"{skipped.format()}")
            skipped.clear()

    # ---------------------------------------------------------------- the program
    def split(self, name: str, train: bool = False) -> RetrievalDataset:
        """The dataset split ``name`` as the model reads it (its input size and caption
        length), with the training augmentation when ``train``."""
        data = self.config.data
        on_device = data.frame_decode == "device" or (
            data.frame_decode == "auto" and self.ctx.device.type == "cuda")
        return build_split(data, name, self.image_size, self.config.model.max_words,
                           on_device=on_device, train=train)

    def training_split(self) -> RetrievalDataset:
        """The training split, with the training augmentation and its captions re-paired by
        ``--noisy_pairs`` (tvr/data/noise.py, seeded by ``--seed``; the other splits and the
        evaluation bank stay clean), the noise logged and kept for the metrics files."""
        dataset = self.split("train", train=True)
        self.noise = add_noise(dataset, self.config.data.noisy_pairs, self.config.train.seed)
        if self.noise.fraction:
            self.log(str(self.noise))
        return dataset

    def run(self) -> Optional[dict]:
        config = self.config
        test_set = self.split("test")
        results = None
        if config.do_train:
            train_set = self.training_split()
            val_set = self.split("val")
            self.log(f"train {train_set!r}; val {val_set!r}; test {test_set!r}")
            self.train(train_set, val_set)
            best = self.output_dir / checkpoint.BEST
            barrier()
            checkpoint.load_weights_for_eval(best, self.model)
            self.log(f"testing the best checkpoint {best}")
        if config.do_train or config.do_eval:
            bank = self.split("train") if config.eval.eval_bank_size else None
            results = self.evaluate(test_set, "test", step=0, bank=bank)
            if results is not None:
                self.write_results(results, "test")
        self.monitor.plot()
        self.monitor.close()
        cleanup()
        return results

