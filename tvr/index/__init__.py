"""Search your own videos with a sentence: build an index with a trained checkpoint, query it
from the command line or a local web page (``python -m tvr.index --help``)."""
