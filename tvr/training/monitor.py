"""What a run reports (docs/behaviour.md §10: rank 0 only): a log file, TensorBoard scalars, a PNG
of curves.

``RunMonitor(output_dir, enabled)`` writes, when ``enabled`` (rank 0):

- ``<output_dir>/log.txt`` — everything logged through :attr:`RunMonitor.log` (also on stderr);
- ``<output_dir>/tensorboard/`` — scalars: each loss term, learning rate, logit scale, recalls;
- ``<output_dir>/scalars.jsonl`` — the same scalars, one JSON line per step and prefix, for
  scripts (a resumed run appends: the last line of a step is the one that counts);
- ``<output_dir>/curves.png`` — training loss and validation R@1 against the step, at the end.

On other ranks every method is a no-op, so callers never test the rank themselves.
"""
from __future__ import annotations

import json
import logging
import sys
from collections import defaultdict
from pathlib import Path


class RunMonitor:
    def __init__(self, output_dir: str | Path, enabled: bool = True):
        self.enabled = enabled
        self.output_dir = Path(output_dir)
        self.history: dict[str, list[tuple[int, float]]] = defaultdict(list)
        self.log = logging.getLogger(f"tvr.run.{id(self)}")
        self.log.propagate = False
        self.log.setLevel(logging.INFO if enabled else logging.CRITICAL + 1)
        self._writer = None
        self._jsonl = None
        if not enabled:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        formatter = logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S")
        for handler in (logging.FileHandler(self.output_dir / "log.txt"),
                        logging.StreamHandler(sys.stderr)):
            handler.setFormatter(formatter)
            self.log.addHandler(handler)
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package
        self._writer = SummaryWriter(str(self.output_dir / "tensorboard"))
        self._jsonl = open(self.output_dir / "scalars.jsonl", "a")

    def scalars(self, step: int, values: dict[str, float], prefix: str) -> None:
        """Record ``values`` under ``prefix/`` (e.g. "train", "val") for TensorBoard and the plot."""
        if not self.enabled:
            return
        for name, value in values.items():
            self.history[f"{prefix}/{name}"].append((step, float(value)))
            self._writer.add_scalar(f"{prefix}/{name}", float(value), step)
        self._jsonl.write(json.dumps({"step": step, "prefix": prefix, **values}) + "\n")
        self._jsonl.flush()

    def plot(self, loss_key: str = "train/loss", recall_key: str = "val/t2v_R1") -> Path | None:
        """Write ``curves.png``: training loss and validation R@1 against the global step."""
        if not self.enabled or not self.history.get(loss_key):
            return None
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, loss_axis = plt.subplots(figsize=(7, 4))
        steps, losses = zip(*self.history[loss_key])
        loss_axis.plot(steps, losses, color="tab:blue", label="training loss")
        loss_axis.set_xlabel("step")
        loss_axis.set_ylabel("training loss", color="tab:blue")
        if self.history.get(recall_key):
            recall_axis = loss_axis.twinx()
            steps, recalls = zip(*self.history[recall_key])
            recall_axis.plot(steps, recalls, "o-", color="tab:red", label="val t2v R@1")
            recall_axis.set_ylabel("validation text-to-video R@1 (%)", color="tab:red")
        figure.tight_layout()
        path = self.output_dir / "curves.png"
        figure.savefig(path, dpi=100)
        plt.close(figure)
        return path

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._jsonl.close()
        for handler in list(self.log.handlers):
            handler.close()
            self.log.removeHandler(handler)
