"""The flags of main_retrieval.py, generated from the configurations they fill.

Every flag that sets a configuration is declared once, on its field (tvr/settings.py): name,
type, default, bounds or choices, help, and by its place in :class:`RunConfig` the
configuration it fills. :data:`FLAGS` collects them; the parser, the range checks, the keys a
recipe may set (tvr/cli/recipes.py) and the model flags a checkpoint records all come from it.
Defaults reproduce the published MSR-VTT recipe; every paper ablation is a flag
(docs/behaviour.md §5-8). Only this package sees flags: everything below takes the frozen
configurations that :func:`run_config` builds. The configurations import no torch, so neither
does building the parser (``--help``).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from tvr.data.config import DataConfig, SamplingConfig
from tvr.evaluation.config import EvalConfig
from tvr.losses.config import GARELossWeights
from tvr.models.config import (GAREConfig, ModelConfig, NCLConfig, SimilarityConfig,
                               config_from_dict)
from tvr.settings import REQUIRED, Setting, settings_of
from tvr.training.config import FeatureConfig, RunConfig, TrainConfig

GROUPS: dict[str, str] = {  # help groups, in the order --help lists them
    "run": "run",
    "data": "data (docs/behaviour.md §3-4)",
    "optimisation": "optimisation (docs/behaviour.md §9)",
    "features": "feature mode: frozen CLIP, cached outputs (docs/feature_mode.md)",
    "backbone": "backbone",
    "temporal": "temporal aggregation (docs/behaviour.md §5)",
    "similarity": "GARE similarity and its ablations (docs/behaviour.md §6)",
    "losses": "losses (docs/behaviour.md §7); a weight of 0 turns its term off",
    "ncl": "NCL: Sinkhorn-normalised contrastive learning (docs/behaviour.md §8)",
}
CONFIG_GROUPS: dict[type, str] = {
    RunConfig: "run", DataConfig: "data", SamplingConfig: "data", TrainConfig: "optimisation",
    EvalConfig: "run", FeatureConfig: "features", ModelConfig: "backbone",
    GAREConfig: "temporal", SimilarityConfig: "similarity", GARELossWeights: "losses",
    NCLConfig: "ncl",
}
COMPATIBILITY_FLAGS = {  # reference flags that this implementation accepts and ignores
    "--world_size": (int, "taken from the launcher's environment"),
    "--distributed": (int, "taken from the launcher's environment"),
    "--interaction": (str, "DRL's interaction type; GARE has one similarity"),
    "--center": (int, "width divisor of an unused reference module"),
}


@dataclass(frozen=True)
class Flag:
    """A declared flag: where it lives in its configuration and what it accepts."""

    path: tuple[str, ...]   # field names from the configuration, e.g. ("model", "gare", "temp")
    setting: Setting
    default: Any            # tvr.settings.REQUIRED for a required flag
    owner: type             # the configuration class that declares it

    @property
    def kind(self) -> type:
        return self.setting.kind or type(self.default)

    @property
    def group(self) -> str:
        """main_retrieval.py's help group of the flag (:data:`GROUPS`)."""
        return self.setting.group or CONFIG_GROUPS[self.owner]


def declared(config_type: type, path: tuple[str, ...] = ()) -> Iterator[Flag]:
    """The flags that ``config_type`` and the configurations it holds declare, in order."""
    hints = typing.get_type_hints(config_type)
    settings = dict((item.name, setting) for item, setting in settings_of(config_type))
    for item in dataclasses.fields(config_type):
        kind = hints[item.name]
        if dataclasses.is_dataclass(kind):
            yield from declared(kind, (*path, item.name))
        elif item.name in settings:
            yield Flag((*path, item.name), settings[item.name], item.default, config_type)


FLAGS: dict[str, Flag] = {flag.setting.flag: flag for flag in declared(RunConfig)}


def add_flag(group: argparse._ActionsContainer, flag: Flag) -> None:
    """The argparse argument of a declared flag: its type, default (or required), choices,
    optional value and help."""
    setting = flag.setting
    if flag.kind is bool:
        group.add_argument(f"--{setting.flag}", action="store_true", help=setting.help)
        return
    extra: dict[str, Any] = {"type": flag.kind}
    if flag.default is REQUIRED:
        extra["required"] = True
    else:
        extra["default"] = flag.default
    if setting.choices is not None:
        extra["choices"] = list(setting.choices)
    if setting.const is not None:
        extra.update(nargs="?", const=setting.const)
    group.add_argument(f"--{setting.flag}", help=setting.help, **extra)


def add_setting_flags(group: argparse._ActionsContainer, config_type: type) -> None:
    """One argparse argument per flag that ``config_type`` declares (:func:`declared`)."""
    for flag in declared(config_type):
        add_flag(group, flag)


def add_declared_flags(groups: dict[str, argparse._ArgumentGroup]) -> None:
    """One argparse argument per entry of :data:`FLAGS`, in its help group."""
    for flag in FLAGS.values():
        add_flag(groups[flag.group], flag)


def add_cli_flags(group: argparse._ArgumentGroup, recipes: Sequence[str]) -> None:
    """The flags that steer the command line itself (no configuration holds them)."""
    group.add_argument("--recipe", default=None,
                       help=f"flag defaults of a dataset's published run: one of "
                            f"{', '.join(recipes)}, or a .json file of flag values (default: the "
                            f"--datatype's recipe; 'demo' without --anno_path); flags given on "
                            f"the command line win")
    group.add_argument("--override_config", action="store_true",
                       help="let model flags given on the command line differ from those "
                            "recorded in the --init_model / --resume checkpoint (otherwise a "
                            "contradiction is an error)")
    group.add_argument("--debug", action="store_true",
                       help="show the Python traceback of an expected error (a bad file, a "
                            "malformed annotation, an unreadable video) under its one-line "
                            "message; also TVR_DEBUG=1 in the environment")
    group.add_argument("--local_rank", "--local-rank", type=int, default=0,
                       help="set by the legacy `python -m torch.distributed.launch`")
    for flag, (kind, note) in COMPATIBILITY_FLAGS.items():
        group.add_argument(flag, type=kind, default=None, help=f"accepted and ignored: {note}")


class ShowDefaults(argparse.HelpFormatter):
    """Help that ends each flag's text with its default, when it has one to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        default = action.default
        if not action.option_strings or default is None or isinstance(default, bool) or \
                default is argparse.SUPPRESS:
            return action.help or ""
        return f"{action.help} (default: %(default)s)"


def build_parser(recipes: Sequence[str] = ()) -> argparse.ArgumentParser:
    """Every flag of main_retrieval.py, with the declared (MSR-VTT recipe) defaults."""
    parser = argparse.ArgumentParser(
        description="Train and evaluate GARE text-video retrieval. The defaults shown are the "
                    "published MSR-VTT recipe's; --recipe (and, without --anno_path, the demo) "
                    "changes them, and flags given on the command line win.",
        formatter_class=ShowDefaults)
    groups = {name: parser.add_argument_group(title) for name, title in GROUPS.items()}
    add_cli_flags(groups["run"], recipes)
    add_declared_flags(groups)
    return parser


def given_flags(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]) -> set[str]:
    """The destinations of the flags that ``argv`` itself gives (not defaults, not recipes)."""
    probe = copy.deepcopy(parser)
    for action in probe._actions:
        action.default = argparse.SUPPRESS
    return set(vars(probe.parse_args(argv)))


def flag_values(config: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, Any]]:
    """(flag name, value) of every declared flag that ``config`` (at ``path`` in a
    :class:`RunConfig`) holds."""
    for name, flag in FLAGS.items():
        if flag.path[:len(path)] == path:
            value = config
            for key in flag.path[len(path):]:
                value = getattr(value, key)
            yield name, value


def recorded_run(arguments: dict[str, Any]) -> RunConfig:
    """The configuration of a run from the flags a checkpoint recorded (``args``); flags an
    older run did not record take their declared defaults."""
    defaults = {name: flag.default for name, flag in FLAGS.items()}
    values = {"local_rank": 0, **defaults, **arguments}
    return run_config(argparse.Namespace(**values))


def run_config(args: argparse.Namespace) -> RunConfig:
    """The frozen configuration of parsed flags (the only way from flags to configurations).
    ``args.resume`` must already be a file (:func:`tvr.cli.retrieval.resolve`)."""
    from tvr.training.checkpoint import plain_args  # imports torch: after parsing only
    nested: dict[str, Any] = {}
    for name, flag in FLAGS.items():
        level = nested
        for key in flag.path[:-1]:
            level = level.setdefault(key, {})
        level[flag.path[-1]] = getattr(args, name)
    nested["arguments"], nested["local_rank"] = plain_args(vars(args)), args.local_rank
    if nested["output_dir"] is None:
        nested["output_dir"] = str(Path("outputs") / args.datatype)
    return config_from_dict(RunConfig, nested)
