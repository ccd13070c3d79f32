"""Train and evaluate GARE text-video retrieval (docs/behaviour.md §9-11).

    torchrun --nproc_per_node=4 main_retrieval.py --do_train 1 --recipe msrvtt \\
        --anno_path data/MSR-VTT/anns --video_path data/MSR-VTT/videos ...

Without ``--anno_path`` it runs the built-in demo (recipe ``demo`` in tvr/cli/recipes.py): it writes
a small synthetic dataset of moving coloured shapes to ``data/toy`` (captions name colour, shape
and direction of motion), trains a tiny CLIP + GARE from scratch on it and prints the test
retrieval table. Any flag given on the command line still wins (e.g. ``--agg_module meanP``).
The program is tvr/cli/retrieval.py; bad flags and files stop it in one line.
"""
import sys

from tvr.cli.retrieval import main, parse_args

__all__ = ["main", "parse_args"]

if __name__ == "__main__":
    sys.exit(main())
