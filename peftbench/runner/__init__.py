"""One run: a config in, one record out.

``experiment.run(cfg)`` orchestrates a cell (identity, skip-if-done, set-up, training,
test, measurements, the record); ``assembly`` builds the model it trains (task ->
backbone -> method); ``train`` is the loop itself, plain PyTorch. Around them: data
(``loaders``, ``batching``, ``data_cache``), the device (``device``, ``data_parallel``)
and the ways a run survives a stop (``checkpoint``, ``interrupt``, ``memory_guard``).
Measurement lives in :mod:`peftbench.measure`, records in :mod:`peftbench.records`.
"""
