"""Launching many runs: sweeps, side-by-side runs, and the search-then-seeds pipelines.

``callbacks`` are Hydra's sweep hooks (a progress line per job, the report at the end);
``slots`` shares one machine between runs (threads per run, one GPU per run, the Slurm
script); ``slurm`` is the ``slurm`` preset's launcher (a sweep that survives its failed
jobs, requeues its interrupted ones and runs the launching checkout's code); ``commands``
builds the ``run.py -m`` command lines that ``tune`` (an Optuna search per method) and
``protocol`` (the benchmark's lr grid, selection on dev, final seeds) both run.
"""
