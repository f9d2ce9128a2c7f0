"""Skyward's benchmark suite: ``python bench/run.py [--quick] [--only NAME]`` (see run.py)."""
