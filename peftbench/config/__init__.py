"""Configuration: what a run is, checked before anything is loaded.

``checks`` validates one composed config (types, ranges, combinations that cannot work);
``precheck`` runs those checks for every job of a command line before Hydra starts;
``identity`` turns a config into the recipe hash that names a run; ``paths`` finds the
packaged ``conf/`` folder. Light modules only: no torch, transformers or pandas here, so
a typo costs a second. Errors are :mod:`peftbench.errors`'s.
"""
