"""Train and evaluate GARE text-video retrieval (docs/behaviour.md §9-11).

    torchrun --nproc_per_node=4 main_retrieval.py --do_train 1 --recipe msrvtt \\
        --anno_path data/MSR-VTT/anns --video_path data/MSR-VTT/videos ...

Without ``--anno_path`` it runs the built-in demo (recipe ``demo`` in tvr/recipes.py): it writes
a small synthetic dataset of moving coloured shapes to ``data/toy`` (captions name colour, shape
and direction of motion), trains a tiny CLIP + GARE from scratch on it and prints the test
retrieval table. Any flag given on the command line still wins (e.g. ``--agg_module meanP``).

Bad flags and files stop the run before any model is built, in one line (tvr/validation.py):
exit status 2 for a flag, 1 for a file that fails at run time (a malformed annotation, an
unreadable video, an unusable checkpoint); ``--debug`` or ``TVR_DEBUG=1`` adds the traceback.
Unexpected errors keep theirs.
"""
import sys
import traceback

from tvr.options import parse_args
from tvr.storage import ConfigMismatchError
from tvr.validation import UsageError, check_data, debug_requested, describe, expected_errors


def main(argv=None) -> int:
    args = parse_args(argv, for_run=True)
    try:
        return run(args)
    except (ConfigMismatchError, *expected_errors()) as error:
        if debug_requested(args):
            traceback.print_exc()
        print(f"main_retrieval.py: error: {describe(error, args)}", file=sys.stderr)
        return 2 if isinstance(error, (ConfigMismatchError, UsageError)) else 1


def run(args) -> int:
    if args.demo:
        from tvr.data.toy import make_toy_dataset
        toy = make_toy_dataset(args.anno_path)
        print(f"demo: toy dataset in {toy.root} ({toy.num_train} train / {toy.num_test} test "
              f"videos; chance text-to-video R@1 = {100 * toy.chance_t2v_r1:.1f}%)",
              file=sys.stderr)
    check_data(args)
    from tvr.training.trainer import Trainer
    results = Trainer(args).run()
    if results is not None:
        from tvr.evaluation.metrics import format_table
        print(format_table(results["raw"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
