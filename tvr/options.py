"""Command-line flags of main_retrieval.py and their translation into configurations.

Defaults reproduce the published MSR-VTT recipe of the reference implementation; every paper
ablation is a flag whose help text says what it changes (docs/behaviour.md §5-8).
"""
from __future__ import annotations

import argparse
import copy
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from tvr.evaluation.engine import ENGINE_MODES
from tvr.losses.gare_terms import GARELossWeights
from tvr.models.clip import CLIP, CLIPConfig
from tvr.models.gare import GARE, GAREConfig, NCLConfig
from tvr.models.pretrained import load_clip
from tvr.models.similarity import SimilarityConfig
from tvr.models.temporal import AGG_MODULES
from tvr.recipes import DEMO_DATA, RECIPES, RecipeError, load_recipe
from tvr.storage import ConfigMismatchError
from tvr.training.checkpoint import read_model_record
from tvr.validation import UsageError, check_run, check_values, debug_requested


COMPATIBILITY_FLAGS = {  # reference flags that this implementation accepts and ignores
    "--world_size": (int, "taken from the launcher's environment"),
    "--distributed": (int, "taken from the launcher's environment"),
    "--interaction": (str, "DRL's interaction type; GARE has one similarity"),
    "--center": (int, "width divisor of an unused reference module"),
}


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """What to run, on which data, and the optimisation recipe (the reference's flags + new)."""
    group = parser.add_argument_group("run")
    group.add_argument("--do_train", type=int, default=0, help="train (1) or not (0)")
    group.add_argument("--do_eval", type=int, default=0,
                       help="evaluate only, e.g. a --init_model checkpoint (1) or not (0)")
    group.add_argument("--recipe", default=None,
                       help=f"flag defaults of a dataset's published run: one of "
                            f"{', '.join(RECIPES)}, or a .json file of flag values (default: the "
                            f"--datatype's recipe; 'demo' without --anno_path); flags given on "
                            f"the command line win")
    group.add_argument("--output_dir", default=None,
                       help="logs, checkpoints, metrics (default outputs/<recipe>)")
    group.add_argument("--init_model", default=None,
                       help="a checkpoint of this project to evaluate or fine-tune; the model "
                            "is rebuilt from the configuration it records")
    group.add_argument("--override_config", action="store_true",
                       help="let model flags given on the command line differ from those "
                            "recorded in the --init_model / --resume checkpoint (otherwise a "
                            "contradiction is an error)")
    group.add_argument("--resume", default=None, nargs="?", const="auto",
                       help="continue a stopped run from a checkpoint; without a value, from "
                            "<output_dir>/ckpt_last.pt")
    group.add_argument("--seed", type=int, default=42, help="random seed")
    group.add_argument("--n_display", type=int, default=100, help="log every N steps")
    group.add_argument("--eval_every_steps", type=int, default=0,
                       help="also validate every N steps (0: once per epoch); the reference "
                            "validates every 3 x n_display steps")
    group.add_argument("--save_every_steps", type=int, default=0,
                       help="also write ckpt_last.pt every N steps (it is always written at "
                            "the end of each epoch)")
    group.add_argument("--eval_dsl_temp", type=float, default=None,
                       help="also report dual-softmax (DSL) re-ranked metrics at this "
                            "temperature (e.g. 0.01)")
    group.add_argument("--eval_bank_size", type=int, default=0,
                       help="also report QB-Norm and NCL test-time normalisation, with this many "
                            "training captions and videos as the query bank (0: off)")
    group.add_argument("--qb_beta", type=float, default=20.0, help="QB-Norm's inverse temperature")
    group.add_argument("--qb_k", type=int, default=1, help="QB-Norm's activation top-k")
    group.add_argument("--eval_engine", default="auto", choices=ENGINE_MODES,
                       help="evaluation scorer: the folded engine, checked against the per-pair "
                            "module on a sample block and falling back to it on a mismatch "
                            "(auto); folded only (a mismatch is an error); or the per-pair "
                            "module (naive)")
    group.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"],
                       help="where to run: auto = CUDA when available, else the CPU")
    group.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                       help="autocast of the CLIP encoders with fp32 master weights; auto = bf16 "
                            "on GPUs that support it, fp32 otherwise")
    group.add_argument("--debug", action="store_true",
                       help="show the Python traceback of an expected error (a bad file, a "
                            "malformed annotation, an unreadable video) under its one-line "
                            "message; also TVR_DEBUG=1 in the environment")
    group.add_argument("--local_rank", "--local-rank", type=int, default=0,
                       help="set by the legacy `python -m torch.distributed.launch`")
    for flag, (kind, note) in COMPATIBILITY_FLAGS.items():
        group.add_argument(flag, type=kind, default=None, help=f"accepted and ignored: {note}")

    group = parser.add_argument_group("data (docs/behaviour.md §3-4)")
    group.add_argument("--datatype", default="msrvtt",
                       choices=["msrvtt", "msvd", "lsmdc", "activitynet", "didemo"],
                       help="dataset (also picks dataset-specific defaults)")
    group.add_argument("--anno_path", default=None,
                       help="annotation folder; without it the main job runs the built-in demo")
    group.add_argument("--video_path", default=None, help="video folder")
    group.add_argument("--max_words", type=int, default=32, help="caption tokens incl. SOT/EOT")
    group.add_argument("--max_frames", type=int, default=12, help="frames per clip")
    group.add_argument("--video_framerate", type=int, default=1, help="frames sampled per second")
    group.add_argument("--video_backend", default="opencv", choices=["opencv", "pyav"],
                       help="video decoder")
    group.add_argument("--train_augment", default="randaugment", choices=["randaugment", "none"],
                       help="training frame augmentation: the reference's RandAugment with one "
                            "draw per clip, or none")
    group.add_argument("--skip_bad_videos", action="store_true",
                       help="skip unreadable videos and list them at the end of each epoch "
                            "(default: stop with an error naming the file)")
    group.add_argument("--workers", type=int, default=4, help="data loading processes per rank")
    group.add_argument("--frame_cache", default=None,
                       help="read the sampled frames from this cache (written by "
                            "preprocess/build_frame_cache.py with the same sampling flags) "
                            "instead of decoding the videos")
    group.add_argument("--frame_decode", default="auto", choices=["auto", "loader", "device"],
                       help="with --frame_cache: decode and transform the frames in the loader "
                            "workers, or batched on the run's device (JPEG decoding on the GPU); "
                            "auto = device on CUDA, loader otherwise")

    group = parser.add_argument_group("optimisation (docs/behaviour.md §9)")
    group.add_argument("--epochs", type=int, default=5, help="training epochs")
    group.add_argument("--batch_size", type=int, default=128,
                       help="GLOBAL training batch, split across processes")
    group.add_argument("--batch_size_val", type=int, default=128, help="evaluation batch")
    group.add_argument("--lr", type=float, default=1e-4, help="learning rate")
    group.add_argument("--coef_lr", type=float, default=1e-3,
                       help="CLIP's learning rate is lr x coef_lr")
    group.add_argument("--warmup_proportion", type=float, default=0.1,
                       help="linear warm-up share of training, then cosine decay")
    group.add_argument("--weight_decay", type=float, default=0.2, help="weight decay")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_feature_arguments(parser: argparse.ArgumentParser) -> None:
    """Frozen-CLIP feature mode for fast ablations (docs/feature_mode.md)."""
    group = parser.add_argument_group("feature mode: frozen CLIP, cached outputs "
                                      "(docs/feature_mode.md)")
    group.add_argument("--clip_features", default=None, metavar="DIR",
                       help="train and evaluate on CLIP outputs cached in DIR, with the CLIP "
                            "towers frozen: extracted on first use (resumable), then reused by "
                            "every run with the same CLIP weights and data flags; a DIR made "
                            "with others is refused. Differs from the recipe by CLIP's lr x "
                            "coef_lr updates (see the docs)")
    group.add_argument("--feature_views", type=_positive_int, default=1, metavar="E",
                       help="augmented views per training video, drawn as training would "
                            "(view e seeded by (seed, e, video index)); epoch e uses view e mod "
                            "E. Forced to 1 with --train_augment none")
    group.add_argument("--feature_dtype", default="float32", choices=["float32", "float16"],
                       help="storage precision of the cached outputs (float16 halves the size; "
                            "float32 keeps feature mode exact)")
    group.add_argument("--augment_per", default="caption", choices=["caption", "video"],
                       help="training augmentation seeded per caption (seed, epoch, caption "
                            "index: the default) or per video (seed, epoch, video index: all "
                            "captions of a video share the epoch's draw, as feature mode's "
                            "views do)")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Backbone, temporal aggregation, GARE similarity, losses and NCL."""
    group = parser.add_argument_group("backbone")
    group.add_argument("--base_encoder", default="ViT-B/32",
                       choices=["ViT-B/32", "ViT-B/16", "ViT-L/14", "tiny"],
                       help="CLIP architecture; 'tiny' is a small CLIP trained from scratch")
    group.add_argument("--clip_path", default=None,
                       help="CLIP checkpoint file, or a folder holding ViT-B-32.pt etc. "
                            "(default: $TVR_CLIP_PATH, then tvr/models/)")

    group = parser.add_argument_group("temporal aggregation (docs/behaviour.md §5)")
    group.add_argument("--agg_module", default="seqTransf", choices=AGG_MODULES,
                       help="frame aggregation before the similarity (the msvd recipe uses "
                            "None: the reference skips it there)")
    group.add_argument("--num_hidden_layers", type=int, default=4,
                       help="seqTransf blocks, initialised from the first CLIP text blocks")

    group = parser.add_argument_group("GARE similarity and its ablations (docs/behaviour.md §6)")
    group.add_argument("--temp", type=float, default=3.0,
                       help="temperature of the text-conditioned frame pooling softmax")
    group.add_argument("--psi_dropout", type=float, default=0.3,
                       help="dropout inside Psi, on W_1 x + b_1")
    group.add_argument("--delta_side", default="text", choices=["text", "video"],
                       help="apply Δ to the text (s = cos(t + Δ, v); MSR-VTT) or to the pooled "
                            "video (s = cos(t, v + Δ); ActivityNet)")
    group.add_argument("--psi_query", default="gap", choices=["gap", "text"],
                       help="Psi's query: the semantic gap g_ab, or the text embedding alone")
    group.add_argument("--gap_sign", type=int, default=1, choices=[1, -1],
                       help="η in g = η (mean frame - text): +1 video minus text, -1 reversed")
    group.add_argument("--psi_context", default="frames", choices=["frames", "words"],
                       help="Psi's keys/values: the video's frames, or the caption's words")
    group.add_argument("--no_delta", action="store_true",
                       help="the paper's Baseline: no Psi, s = cos(t, pooled video)")

    group = parser.add_argument_group(
        "losses (docs/behaviour.md §7); a weight of 0 turns its term off")
    group.add_argument("--beta", type=float, default=1e-4,
                       help="weight of the relaxed-VIB KL, summed over d (the released code's "
                            "1e-4; the paper's 0.07 was for an older per-dimension KL)")
    group.add_argument("--kl_prior_std", type=float, default=1.0,
                       help="σ of the KL's prior N(0, σ² I)")
    group.add_argument("--kl_anchor", default="video", choices=["video", "text"],
                       help="KL statistics of Δ per video over its texts, or per text")
    group.add_argument("--lambda_epsilon", type=float, default=0.01,
                       help="weight of the trust-region (norm variance) term")
    group.add_argument("--lambda_lower", type=float, default=0.5,
                       help="floor of the trust-region term: it is 0 below -lambda_lower")
    group.add_argument("--lambda_dir", type=float, default=0.01,
                       help="weight of the direction-diversity term")
    group.add_argument("--alpha", type=float, default=2.0,
                       help="sharpness of the direction-diversity kernel")

    group = parser.add_argument_group(
        "NCL: Sinkhorn-normalised contrastive learning (docs/behaviour.md §8)")
    group.add_argument("--ncl", action="store_true",
                       help="train with NCL biases (off by default)")
    group.add_argument("--ncl_tau", type=float, default=None,
                       help="Sinkhorn temperature (default: 1/exp(logit_scale))")
    group.add_argument("--ncl_iters", type=int, default=10, help="Sinkhorn iterations")
    group.add_argument("--ncl_queue", type=int, default=4096,
                       help="past queries kept per direction for the training-time biases")


def gare_config(args: argparse.Namespace) -> GAREConfig:
    """The model configuration of parsed flags."""
    return GAREConfig(
        agg_module=args.agg_module,
        num_hidden_layers=args.num_hidden_layers,
        similarity=SimilarityConfig(
            temp=args.temp, dropout=args.psi_dropout, delta_side=args.delta_side,
            psi_query=args.psi_query, gap_sign=args.gap_sign, psi_context=args.psi_context,
            no_delta=args.no_delta),
        loss=GARELossWeights(
            beta=args.beta, lambda_dir=args.lambda_dir, alpha=args.alpha,
            lambda_epsilon=args.lambda_epsilon, lambda_lower=args.lambda_lower,
            prior_std=args.kl_prior_std, kl_anchor=args.kl_anchor),
        ncl=NCLConfig(enabled=args.ncl, tau=args.ncl_tau, iters=args.ncl_iters,
                      queue=args.ncl_queue),
    )


def build_parser() -> argparse.ArgumentParser:
    """Every flag of main_retrieval.py, with the parser's own (MSR-VTT recipe) defaults."""
    parser = argparse.ArgumentParser(description="Train and evaluate GARE text-video retrieval.")
    add_run_arguments(parser)
    add_feature_arguments(parser)
    add_model_arguments(parser)
    return parser


def given_flags(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]) -> set[str]:
    """The destinations of the flags that ``argv`` itself gives (not defaults, not recipes)."""
    probe = copy.deepcopy(parser)
    for action in probe._actions:
        action.default = argparse.SUPPRESS
    return set(vars(probe.parse_args(argv)))


def parse_args(argv: Optional[Sequence[str]] = None, for_run: bool = False
               ) -> argparse.Namespace:
    """Parse ``argv`` over the defaults of its recipe (tvr/recipes.py).

    Adds ``args.recipe`` (the recipe's name), ``args.given`` (sorted destinations of the flags
    the command line gave: they win over a checkpoint's recorded configuration only with
    ``--override_config``) and ``args.demo`` (the run uses the built-in toy data).
    Values are checked (:func:`tvr.validation.check_values`), and with ``for_run`` what a run
    needs (:func:`tvr.validation.check_run`: input files, a writable output folder, the
    launch): a problem is argparse's one ``error:`` line and exit status 2.
    """
    parser = build_parser()
    parser.prog, parser.usage = "main_retrieval.py", "%(prog)s [flags] (--help lists them)"
    given = given_flags(parser, argv)
    first = parser.parse_args(argv)
    recipe = first.recipe or ("demo" if first.anno_path is None else first.datatype)
    try:
        defaults = load_recipe(recipe, {a.dest for a in parser._actions})
    except RecipeError as error:
        parser.error(str(error))
    name = Path(recipe).stem if recipe.endswith(".json") else recipe
    parser.set_defaults(**{"output_dir": f"outputs/{name}", **defaults})
    args = parser.parse_args(argv)
    args.recipe, args.given = name, sorted(given)
    args.demo = args.anno_path is None
    if args.demo and name != "demo":
        parser.error(f"--recipe {recipe} needs --anno_path and --video_path (without "
                     f"--anno_path the demo runs on its built-in toy data)")
    if args.demo:
        args.anno_path, args.video_path = str(DEMO_DATA), str(DEMO_DATA / "videos")
    try:
        check_values(args, {a.dest: a.choices for a in parser._actions if a.choices})
        if for_run:
            check_run(args)
    except UsageError as error:
        if debug_requested(args):
            traceback.print_exc()
        parser.error(str(error))
    return args


# The flags that define a trained model, and where each is kept in the configuration that
# every checkpoint records (see model_record): "gare.similarity.temp" is
# record["gare"]["similarity"]["temp"].
MODEL_FLAGS: dict[str, str] = {
    "base_encoder": "base_encoder", "max_words": "max_words", "max_frames": "max_frames",
    "agg_module": "gare.agg_module", "num_hidden_layers": "gare.num_hidden_layers",
    "temp": "gare.similarity.temp", "psi_dropout": "gare.similarity.dropout",
    "delta_side": "gare.similarity.delta_side", "psi_query": "gare.similarity.psi_query",
    "gap_sign": "gare.similarity.gap_sign", "psi_context": "gare.similarity.psi_context",
    "no_delta": "gare.similarity.no_delta",
    "beta": "gare.loss.beta", "kl_prior_std": "gare.loss.prior_std",
    "kl_anchor": "gare.loss.kl_anchor", "lambda_epsilon": "gare.loss.lambda_epsilon",
    "lambda_lower": "gare.loss.lambda_lower", "lambda_dir": "gare.loss.lambda_dir",
    "alpha": "gare.loss.alpha",
    "ncl": "gare.ncl.enabled", "ncl_tau": "gare.ncl.tau", "ncl_iters": "gare.ncl.iters",
    "ncl_queue": "gare.ncl.queue",
}


def model_record(args: argparse.Namespace, model: GARE) -> dict[str, Any]:
    """The configuration a checkpoint records: enough to rebuild ``model`` without any flag.

    ``clip``: the CLIP architecture (:class:`CLIPConfig` fields); ``gare``: the whole
    :class:`GAREConfig` (temporal module, similarity and its ablation switches, loss weights,
    NCL); ``base_encoder``, ``max_words`` and ``max_frames`` as trained.
    """
    return {"base_encoder": args.base_encoder, "max_words": args.max_words,
            "max_frames": args.max_frames, "clip": asdict(model.clip.config),
            "gare": asdict(model.config)}


def _recorded(record: dict[str, Any], path: str) -> Any:
    value = record
    for key in path.split("."):
        value = value[key]
    return value


def apply_model_record(args: argparse.Namespace, record: dict[str, Any], source: str
                       ) -> list[str]:
    """Set every model flag of ``args`` to the value that ``record`` (from checkpoint
    ``source``) holds, except flags the command line gave (``args.given``): those must agree
    with the record, or :class:`ConfigMismatchError` names each contradiction, unless
    ``args.override_config``. Returns a note per overridden flag, for the log."""
    given = set(getattr(args, "given", ()))
    clashes = []
    for flag, path in MODEL_FLAGS.items():
        saved = _recorded(record, path)
        if flag in given and getattr(args, flag) != saved:
            clashes.append(f"--{flag} {getattr(args, flag)} (the checkpoint's: {saved})")
        else:
            setattr(args, flag, saved)
    if clashes and not getattr(args, "override_config", False):
        raise ConfigMismatchError(
            f"{source} was trained with other model settings than the command line gives: "
            f"{'; '.join(clashes)}. Drop these flags to use the checkpoint's values, or pass "
            f"--override_config to build the model with yours")
    return [f"overriding the checkpoint's configuration: {clash}" for clash in clashes]


def build_model(args: argparse.Namespace, source: Optional[str] = None,
                warn: Callable[[str], None] = print) -> GARE:
    """The GARE model of ``args``; with a checkpoint ``source`` (``--init_model`` or the
    ``--resume`` file), the one its recorded configuration describes (flags reconciled by
    :func:`apply_model_record`, ``args`` updated in place). Weights are not loaded here: a
    model rebuilt from a record starts from a random CLIP of the recorded shapes, which the
    checkpoint's weights then replace, so the CLIP release file is not needed."""
    record = read_model_record(source) if source else None
    if record is None:
        if source:
            warn(f"{source} records no model configuration (written by an older version of "
                 f"this project): the model is built from the command-line flags, which must "
                 f"be those it was trained with")
        return GARE(load_clip(args.base_encoder, args.clip_path), gare_config(args))
    for note in apply_model_record(args, record, str(source)):
        warn(note)
    return GARE(CLIP(CLIPConfig(**record["clip"])), gare_config(args))
