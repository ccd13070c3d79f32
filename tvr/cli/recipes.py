"""Recipes: the settings of each dataset's published run, and of the demo, in one place.

A recipe is a set of flag values that become the defaults of ``main_retrieval.py``'s parser:
a flag given on the command line always wins. ``--recipe NAME`` picks one of :data:`RECIPES`;
``--recipe path/to/file.json`` reads a JSON object of flag names and values (e.g. a forked
ablation: ``{"recipe_base": "msrvtt", "delta_side": "video", "temp": 1.0}``, where the
optional ``recipe_base`` names the recipe it starts from). Without ``--recipe``, the recipe is
the ``--datatype``'s (msrvtt by default), or ``demo`` when no ``--anno_path`` is given.

The parser's own defaults are the published MSR-VTT recipe of the reference implementation
(ViT-B/32, 32 words, 12 frames, 5 epochs, global batch 128, lr 1e-4, CLIP lr x 1e-3, temp 3,
beta 1e-4, lambda_dir 0.01, lambda_epsilon 0.01, lambda_lower 0.5, alpha 2; docs/behaviour.md
§4-§9), so each recipe below lists only what its dataset changes. Every run writes to
``--output_dir``, by default ``outputs/<recipe>``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DEMO_DATA = Path(__file__).resolve().parents[2] / "data" / "toy"  # written on first use
_REFERENCE_RUN = dict(workers=8, n_display=50)  # the reference scripts' loader and logging
_PARAGRAPHS = dict(max_words=64, max_frames=64, batch_size=64, batch_size_val=64)

RECIPES: dict[str, dict[str, Any]] = {
    # MSR-VTT 9k train / 1k-A test; the reference validates every 3 x n_display steps.
    "msrvtt": dict(datatype="msrvtt", eval_every_steps=150, **_REFERENCE_RUN),
    # MSVD: multi-sentence test; the reference skips temporal aggregation for it.
    "msvd": dict(datatype="msvd", agg_module="None", **_REFERENCE_RUN),
    "lsmdc": dict(datatype="lsmdc", **_REFERENCE_RUN),
    # Paragraph retrieval: all sentences of a video concatenated, 64 tokens and 64 frames.
    "didemo": dict(datatype="didemo", **_PARAGRAPHS, **_REFERENCE_RUN),
    "activitynet": dict(datatype="activitynet", epochs=10, delta_side="video", **_PARAGRAPHS,
                        **_REFERENCE_RUN),
    # The built-in demo (data/toy, generated on first use): a tiny CLIP trained from scratch,
    # so a higher lr with CLIP at full lr, and no colour augmentation (colour is in the
    # captions). max_words 16 holds every toy caption (at most 14 tokens with SOT/EOT); 6
    # frames, as left/right is learned more reliably than with 4; lr 5e-4 after a warm-up of
    # about 130 steps, as larger early steps often lose the sense of motion (left/right,
    # up/down) for good; 18 epochs, as the captions' many wordings take longer to learn than
    # one phrase each, within a 5-minute budget on 2 CPU cores. Why, with the measurements:
    # docs/demo.md §3, §4 and §6.
    "demo": dict(datatype="msrvtt", do_train=1, base_encoder="tiny", max_words=16, max_frames=6,
                 video_framerate=3, batch_size=32, batch_size_val=100, epochs=18, lr=5e-4,
                 warmup_proportion=0.16, coef_lr=1.0, n_display=50, workers=2,
                 train_augment="none", num_hidden_layers=2),
}


class RecipeError(ValueError):
    """A recipe that does not exist or names flags the parser does not know."""


def load_recipe(name_or_path: str, known_flags: set[str]) -> dict[str, Any]:
    """The flag defaults of a built-in recipe or a JSON recipe file (module docstring).

    Raises :class:`RecipeError` for an unknown name, an unreadable file, or a key that is not
    one of ``known_flags`` (the parser's destinations, e.g. ``max_frames``).
    """
    if name_or_path in RECIPES:
        return dict(RECIPES[name_or_path])
    path = Path(name_or_path)
    if path.suffix != ".json":
        raise RecipeError(f"--recipe {name_or_path!r}: not a built-in recipe (choose one of "
                          f"{', '.join(RECIPES)}) nor a .json file")
    try:
        values = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise RecipeError(f"--recipe {path}: cannot read a JSON object of flag values "
                          f"({error})") from error
    if not isinstance(values, dict):
        raise RecipeError(f"--recipe {path}: expected a JSON object of flag values, found "
                          f"{type(values).__name__}")
    base = values.pop("recipe_base", None)
    unknown = sorted(set(values) - known_flags)
    if unknown:
        raise RecipeError(f"--recipe {path}: unknown flags {unknown} (keys are flag names "
                          f"without the leading --, e.g. \"max_frames\")")
    if base is not None:
        if base not in RECIPES:
            raise RecipeError(f"--recipe {path}: recipe_base {base!r} is not one of "
                              f"{', '.join(RECIPES)}")
        values = {**RECIPES[base], **values}
    return values
