"""Frozen-CLIP feature mode for fast ablations (``--clip_features DIR``; docs/feature_mode.md).

The CLIP towers are frozen, so their outputs are a function of the data alone: they are
extracted once into a :class:`tvr.data.clip_features.FeatureStore` and every later step runs
only the temporal module, the GARE similarity and the losses on them (:meth:`GARE.forward`
with ``clip_outputs``), and evaluation only the temporal module on the cached frame embeddings.

What is cached, per split:

- captions: the fp32 EOT ``sentence`` and, when the similarity uses them (``--psi_context
  words``), the projected token states ``words``, plus the token mask;
- videos: the CLIP image embedding of each of the ``max_frames`` frame slots (padded slots
  included: they enter the temporal module and the pooling) and the frame mask. The training
  split holds ``E = --feature_views`` augmented views: view ``e`` of video ``v`` is the frames
  the training transform gives with torch's generator seeded from ``(seed, e, v)`` (the seeding of
  :class:`tvr.data.loaders.SeededItems`), and epoch ``k`` reads view ``k mod E``. The full
  model draws per caption by default; ``--augment_per video`` makes it draw per video, with
  the same seeds, so the two see the same pixels for the first E epochs. Evaluation splits are
  extracted once with the eval transform.

Batches are the full model's: the same :class:`~tvr.data.loaders.ResumableSampler` over the
training captions (without those of videos found unreadable at extraction), so the same pairs
in the same order, resumable mid-epoch. Captions meet the video of ``caption_to_video``, so
``--noisy_pairs`` (tvr/data/noise.py) flows through; it changes no caption, video or window,
so the store of the clean split serves it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from tvr.data.clip_features import MANIFEST, FeatureStore, SplitWriter, StoredSplit, to_tensor
from tvr.data.datasets import Batch, RetrievalDataset, collate_skipping
from tvr.data.device_loader import DeviceLoader
from tvr.data.loaders import ResumableSampler, SeededItems
from tvr.data.video import VideoReadError
from tvr.evaluation.encode import EncodedSplit, encode_split
from tvr.models.clip import CLIP
from tvr.models.gare import GARE, CLIPOutputs, TextFeatures, VideoFeatures
from tvr.training.config import RunConfig
from tvr.training.optim import freeze_clip_towers

AUGMENTED = ".augmented"  # store name suffix of a training split extracted with augmentation


def clip_fingerprint(clip: CLIP) -> str:
    """sha256 of CLIP's tower weights (names, dtypes, shapes, bytes; ``logit_scale`` aside,
    which trains and does not enter the cached outputs)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(clip.state_dict().items()):
        if name == "logit_scale":
            continue
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def dataset_fingerprint(dataset: RetrievalDataset) -> str:
    """sha256 of a split's captions, caption windows and video list, and each video file's size."""
    digest = hashlib.sha256(json.dumps([dataset.pairs, dataset.video_ids]).encode())
    for video_id in dataset.video_ids:
        try:
            size = Path(dataset.video_files(video_id)).stat().st_size
        except (VideoReadError, OSError):
            size = -1
        digest.update(f"{video_id}:{size};".encode())
    return digest.hexdigest()


def store_key(config: RunConfig, model: GARE, precision: str) -> dict[str, Any]:
    """Everything the cached outputs depend on besides the split's own data."""
    data, sampling, seed = config.data, config.data.sampling, config.train.seed
    return {
        "clip": {"sha256": clip_fingerprint(model.clip),
                 "base_encoder": config.model.base_encoder, "config": asdict(model.clip.config)},
        "text": {"max_words": config.model.max_words},
        "words": model.uses_words,
        "video": {"max_frames": sampling.max_frames,
                  "video_framerate": sampling.video_framerate,
                  "video_backend": sampling.video_backend, "frame_cache": data.frame_cache},
        "datatype": data.datatype,
        "train_views": {"train_augment": data.train_augment,
                        "views": config.features.feature_views if data.augment else 1,
                        "seed": seed if data.augment else None},
        "dtype": config.features.feature_dtype,
        "precision": precision,
    }


def single_process(root: Any, what: str) -> str:
    return (f"--clip_features {root} {what}: extraction runs in a single process. Run the same "
            f"command once without the distributed launcher (it extracts, then trains), then "
            f"launch again")


def _progress(loader, desc: str):
    return tqdm(loader, desc=desc, mininterval=0.5 if sys.stderr.isatty() else 30)


@torch.no_grad()
def extract_split(model: GARE, dataset: RetrievalDataset, writer: SplitWriter, *, views: int,
                  seed: int, batch_size: int, workers: int, device: torch.device,
                  autocast: Callable[[], contextlib.AbstractContextManager],
                  words: bool) -> None:
    """Fill ``writer``'s arrays with the CLIP outputs of ``dataset`` (resuming where its
    progress says); views as the module docstring says. Draws nothing from the global
    generators: the augmentation of each video is seeded per video."""
    model.eval()
    captions, videos = len(dataset.pairs), len(dataset.video_ids)
    done = writer.done("text")
    if done < captions:
        loader = DataLoader(Subset(dataset.captions(), range(done, captions)),
                            batch_size=batch_size, num_workers=workers,
                            collate_fn=collate_skipping, generator=torch.Generator())
        for batch in _progress(DeviceLoader(loader, device), f"{writer.name}: captions"):
            ids, mask, _ = batch.data
            with autocast():
                text = model.encode_text(ids, mask)
            rows = slice(done, done + len(ids))
            writer.array("text_sentence")[rows] = text.sentence.float().cpu().numpy()
            if words:
                writer.array("text_words")[rows] = text.words.float().cpu().numpy()
            writer.array("text_mask")[rows] = mask.cpu().numpy()
            done += len(ids)
            writer.commit("text", done)
    position = {video_id: v for v, video_id in enumerate(dataset.video_ids)}
    for view in range(views):
        task, done = f"video{view}", writer.done(f"video{view}")
        if done >= videos:
            continue
        items = SeededItems(dataset.videos(), seed)
        items.epoch = view
        loader = DataLoader(Subset(items, range(done, videos)), batch_size=batch_size,
                            num_workers=workers, collate_fn=collate_skipping,
                            generator=torch.Generator())
        for batch in _progress(DeviceLoader(loader, device),
                               f"{writer.name}: videos, view {view + 1}/{views}"):
            skipped = [{"video_index": position[m.video_id], "video_id": m.video_id,
                        "path": m.path, "reason": m.reason} for m in batch.skipped]
            done += len(skipped)
            if batch.data is not None:
                video, mask, index = batch.data
                with autocast():
                    frames = model.frame_embeddings(video)
                rows = index.cpu().numpy()
                writer.array("video_frames")[view, rows] = frames.float().cpu().numpy()
                if view == 0:
                    writer.array("video_mask")[rows] = mask.cpu().numpy()
                done += len(rows)
            writer.commit(task, done, skipped)


class FeatureBatches:
    """The training batches of feature mode: :class:`Batch` of :class:`CLIPOutputs`, in the
    order of ``sampler`` (positions into ``captions``), view ``epoch mod E``. Plays both the
    loader and the per-epoch ``items`` of the trainer (``.epoch``)."""

    def __init__(self, stored: StoredSplit, captions: np.ndarray, caption_to_video: np.ndarray,
                 sampler: ResumableSampler, batch_size: int, words: bool):
        self.stored, self.captions, self.caption_to_video = stored, captions, caption_to_video
        self.sampler, self.batch_size, self.words = sampler, batch_size, words
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    def __iter__(self) -> Iterator[Batch]:
        order = np.fromiter(iter(self.sampler), dtype=np.int64)
        frames = self.stored.frames[self.epoch % self.stored.views]
        for start in range(0, len(order) - self.batch_size + 1, self.batch_size):
            rows = self.captions[order[start:start + self.batch_size]]
            videos = self.caption_to_video[rows]
            yield Batch(CLIPOutputs(
                to_tensor(self.stored.sentence, rows),
                to_tensor(self.stored.words, rows) if self.words else None,
                to_tensor(self.stored.text_mask, rows, torch.long),
                to_tensor(frames, videos),
                to_tensor(self.stored.video_mask, videos, torch.long)), [])


class FeatureMode:
    """A trainer's feature mode: the store, its splits, the training batches and the
    evaluation encoder (a drop-in for :func:`tvr.evaluation.encode.encode_split`)."""

    def __init__(self, config: RunConfig, model: GARE, device: torch.device,
                 autocast: Callable[[], contextlib.AbstractContextManager], precision: str,
                 world_size: int, log: Callable[[str], None]):
        self.config, self.model, self.device, self.autocast = config, model, device, autocast
        self.world_size, self.log = world_size, log
        folder, views = config.features.clip_features, config.features.feature_views
        self.augment = config.data.augment
        self.views = views if self.augment else 1
        if views > 1 and not self.augment:
            log(f"feature mode: --feature_views {views} ignored with "
                f"--train_augment none (every view would be the same)")
        if world_size > 1 and not (Path(folder) / MANIFEST).is_file():
            raise RuntimeError(single_process(folder, "does not exist yet"))
        frozen = freeze_clip_towers(model)
        self.store = FeatureStore(folder, store_key(config, model, precision))
        self.opened: dict[str, StoredSplit] = {}
        train = config.train
        log(f"feature mode: CLIP outputs cached in {self.store.root}; {frozen} CLIP tower "
            f"tensors frozen (the recipe would train them at lr x coef_lr = "
            f"{train.lr * train.coef_lr:g}); logit_scale trains; docs/feature_mode.md")

    @staticmethod
    def inputs(data: CLIPOutputs) -> dict[str, Any]:
        """The model's inputs for a batch of cached outputs (tvr/training/sources.py)."""
        return {"clip_outputs": data}

    def stored(self, dataset: RetrievalDataset, train: bool) -> StoredSplit:
        """The cached outputs of ``dataset`` (the training split with its views when
        ``train``), extracted now if the store lacks them."""
        split = dataset.name.rsplit("/", 1)[-1]
        augmented = train and self.augment
        name = split + AUGMENTED if augmented else split
        if name in self.opened:
            return self.opened[name]
        spec = {"fingerprint": dataset_fingerprint(dataset),
                "views": self.views if augmented else 1, "augment": augmented}
        stored = self.store.open(name, spec)
        if stored is None and (same := self.store.find(spec)) is not None:
            self.log(f"feature mode: {name} has the data of the stored {same}: reusing it")
            stored = self.store.open(same, spec)
        if stored is None:
            stored = self._extract(name, spec, dataset)
        else:
            self.log(f"feature mode: {dataset!r} read from {stored.folder}")
        if stored.skipped:
            self.log(f"feature mode: {len(stored.skipped)} videos of {dataset!r} were unreadable "
                     f"at extraction and are left out: "
                     + ", ".join(f"{s['path']} ({s['reason']})" for s in stored.skipped))
        self.opened[name] = stored
        return stored

    def _extract(self, name: str, spec: dict[str, Any], dataset: RetrievalDataset
                 ) -> StoredSplit:
        if self.world_size > 1:
            raise RuntimeError(single_process(self.store.root, f"lacks {name}"))
        words = self.store.has_words
        captions, videos = len(dataset.pairs), len(dataset.video_ids)
        config = self.config
        dim, dtype = self.model.clip.config.embed_dim, config.features.feature_dtype
        words_len, frames = config.model.max_words, config.data.sampling.max_frames
        arrays = {"text_sentence": ((captions, dim), dtype),
                  "text_mask": ((captions, words_len), "uint8"),
                  "video_frames": ((spec["views"], videos, frames, dim), dtype),
                  "video_mask": ((videos, frames), "uint8")}
        if words:
            arrays["text_words"] = ((captions, words_len, dim), dtype)
        size = sum(np.prod(shape) * np.dtype(t).itemsize for shape, t in arrays.values())
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        was_training = self.model.training
        with self.store.writer(name, spec, arrays) as writer:
            self.log(f"feature mode: {'resuming' if writer.resumed else 'extracting'} {name} "
                     f"({captions} captions, {videos} videos x {spec['views']} view(s), "
                     f"{size / 2**20:.1f} MiB) into {writer.folder}")
            with torch.random.fork_rng(devices=devices):
                extract_split(self.model, dataset, writer, views=spec["views"],
                              seed=config.train.seed, batch_size=config.eval.batch_size_val,
                              workers=config.data.workers,
                              device=self.device, autocast=self.autocast, words=words)
            self.model.train(was_training)
            return writer.finish({"split": dataset.name, "captions": captions,
                                  "videos": videos, "anno_path": str(config.data.anno_path),
                                  "video_path": str(config.data.video_path)})

    def train_loader(self, dataset: RetrievalDataset, rank: int, world_size: int,
                     local_batch: int) -> tuple[FeatureBatches, ResumableSampler, FeatureBatches]:
        """What :func:`tvr.data.loaders.train_loader` returns, over the cached outputs."""
        stored = self.stored(dataset, train=True)
        bad = {s["video_index"] for s in stored.skipped}
        captions = np.array([i for i, v in enumerate(dataset.caption_to_video) if v not in bad],
                            dtype=np.int64)
        sampler = ResumableSampler(captions, world_size, rank, self.config.train.seed,
                                   local_batch)
        if sampler.batches_per_epoch == 0:
            raise ValueError(f"{dataset!r} has fewer pairs per process ({sampler.num_samples}) "
                             f"than one batch ({local_batch}); lower --batch_size")
        batches = FeatureBatches(stored, captions, np.asarray(dataset.caption_to_video),
                                 sampler, local_batch, self.model.uses_words)
        epochs = self.config.train.epochs
        if self.augment and stored.views < epochs:
            self.log(f"feature mode: {stored.views} augmented view(s) for {epochs} "
                     f"epochs: epoch k reads view k mod {stored.views} (views repeat)")
        return batches, sampler, batches

    @torch.no_grad()
    def encode(self, model: GARE, dataset: RetrievalDataset, batch_size: int, workers: int,
               device: torch.device,
               autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
               limit: Optional[int] = None) -> EncodedSplit:
        """:func:`encode_split` from the cached outputs: the temporal module on the stored
        frame embeddings. A ``limit`` (a bank of training queries) goes through CLIP."""
        if limit is not None:
            return encode_split(model, dataset, batch_size, workers, device, autocast, limit)
        stored = self.stored(dataset, train=False)
        model.eval()
        readable = stored.readable_videos()
        frames, masks = [], []
        for start in range(0, len(readable), batch_size):
            rows = readable[start:start + batch_size]
            mask = to_tensor(stored.video_mask, rows, torch.long).to(device)
            frames.append(model.aggregate(to_tensor(stored.frames[0], rows).to(device),
                                          mask).frames)
            masks.append(mask)
        words = (to_tensor(stored.words).to(device)
                 if model.uses_words and stored.words is not None else None)
        texts = TextFeatures(to_tensor(stored.sentence).to(device), words,
                             to_tensor(stored.text_mask, dtype=torch.long).to(device))
        return EncodedSplit(texts, VideoFeatures(torch.cat(frames), torch.cat(masks)),
                            torch.as_tensor(readable, device=device),
                            [s["path"] for s in stored.skipped])
