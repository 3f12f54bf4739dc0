"""Benchmarks: run each from the repo root as ``.venv/bin/python -m bench.<name>`` (usage in its docstring).

Run as modules of this package, they import each other (``bench._common``) and the tests' tiny models
and ComfyUI harness (``testkit``) with no ``sys.path`` edits. ``bench.run_all`` runs them all.
"""
