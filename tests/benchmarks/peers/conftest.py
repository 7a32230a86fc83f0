"""The peers of the benchmark run in their own virtual environments (``bench.py`` starts
them): pytest's doctest collection, run with calibrew's environment, does not import them."""

collect_ignore_glob = ["pocketcoffea_*.py"]
