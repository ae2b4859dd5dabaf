"""What extraction, search, re-ranking and query expansion share, used by ``tools/extract.py``,
``tools/search.py`` and the engines' evaluation."""
