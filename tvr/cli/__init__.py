"""The command-line programs: the only modules that see flags."""
