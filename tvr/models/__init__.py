"""Models: the CLIP backbone (``clip``, ``pretrained``) and its tokenizer (``tokenizer``), and,
built on them, the GARE retrieval model (``temporal``, ``similarity``, ``gare``, ``factory``);
their configurations are in ``config``. The package imports none of its modules, so that a
configuration loads without torch (``python main_retrieval.py --help``)."""
