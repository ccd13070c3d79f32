"""Training losses: symmetric InfoNCE (``contrastive``), GARE's regularisers on Δ
(``gare_terms``, docs/behaviour.md §7) and NCL (``ncl``, docs/behaviour.md §8); their weights are
declared in ``config``. The package imports none of its modules, so that a configuration loads
without torch (``python main_retrieval.py --help``)."""
