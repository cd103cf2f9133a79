"""Launching many runs: sweeps, side-by-side runs, and the search-then-seeds pipelines.

``callbacks`` are Hydra's sweep hooks (a progress line per job, the report at the end);
``slots`` shares one machine between runs (threads per run, one GPU per run, the Slurm
script); ``commands`` builds the ``run.py -m`` command lines that ``tune`` (an Optuna
search per method) and ``protocol`` (the benchmark's lr grid, selection on dev, final
seeds) both run.
"""
