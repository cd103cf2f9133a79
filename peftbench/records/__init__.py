"""Records, the source of truth, and the views that mirror them.

``schema`` is the typed record shared by the writer and :mod:`analysis`; ``store`` writes
one JSON file per run atomically and finds a recipe's success; ``redact`` keeps secrets out
of everything written or sent; ``tracking`` mirrors a record to wandb (offline by default).
"""
