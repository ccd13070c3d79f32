"""Train and evaluate GARE text-video retrieval (docs/behaviour.md §9-11).

    torchrun --nproc_per_node=4 main_retrieval.py --do_train 1 --recipe msrvtt \\
        --anno_path data/MSR-VTT/anns --video_path data/MSR-VTT/videos ...

Without ``--anno_path`` it runs the built-in demo (recipe ``demo`` in tvr/recipes.py): it writes
a small synthetic dataset of moving coloured shapes to ``data/toy`` (captions name colour, shape
and direction of motion), trains a tiny CLIP + GARE from scratch on it and prints the test
retrieval table. Any flag given on the command line still wins (e.g. ``--agg_module meanP``).
"""
import sys

from tvr.options import ConfigMismatchError, parse_args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except ConfigMismatchError as error:
        print(f"main_retrieval.py: error: {error}", file=sys.stderr)
        return 2


def run(args) -> int:
    if args.demo:
        from tvr.data.toy import make_toy_dataset
        toy = make_toy_dataset(args.anno_path)
        print(f"demo: toy dataset in {toy.root} ({toy.num_train} train / {toy.num_test} test "
              f"videos; chance text-to-video R@1 = {100 * toy.chance_t2v_r1:.1f}%)",
              file=sys.stderr)
    from tvr.training.trainer import Trainer
    results = Trainer(args).run()
    if results is not None:
        from tvr.evaluation.metrics import format_table
        print(format_table(results["raw"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
