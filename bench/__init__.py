"""Benchmarks of the pipeline on the real local stack: scoring, the bridge, end to end, and memory.

``make bench`` (or ``python -m bench``) runs them all on a throwaway stack;
each module also runs alone (``python -m bench.scoring --help``). Figures go
to ``bench/results/<name>.json`` and ``bench/results/latest.md``.
"""
