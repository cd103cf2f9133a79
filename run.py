"""Entry point: `python run.py` runs one cell, `python run.py -m method=lora,prefix` a sweep.

The same Hydra app as `peftbench run` (peftbench/app.py), for a source checkout.
"""

from peftbench.app import main

if __name__ == "__main__":
    main()
