"""``python -m tvr.experiments``: the command line is tvr/experiments/cli.py."""
from tvr.experiments.cli import main

raise SystemExit(main())
