"""What the tests and the benchmarks share: never imported by ``progrpo`` or ``nodes``, never shipped.

* ``comfy_harness``: the installed ComfyUI in-process (the one place that puts its folder first on
  ``sys.path``), a real server on a temporary base folder, and the test node pack ``comfy_test_pack``;
* ``tiny_stock_models``, ``tiny_checkpoints``, ``tiny_families*``: tiny random models in ComfyUI's file
  layouts (stock loaders, single-file checkpoints, every text-to-image family ComfyUI runs);
* ``comfy_graphs``, ``training_setup``: prompt graphs and training runs of the reliability tests;
* ``gaussian_denoiser``, ``reference_rewards``: a closed-form denoiser and the reward models' reference code.

Importable from the repo root: pytest's ``pythonpath`` (pyproject.toml) for the tests, ``python -m
bench.<name>`` for the benchmarks, PYTHONPATH for a test server (``comfy_harness.ComfyServer.start``).
It is a package of its own, not ``tests.*``: ComfyUI ships a top-level ``tests`` package that is
first on ``sys.path`` wherever ComfyUI runs.
"""
