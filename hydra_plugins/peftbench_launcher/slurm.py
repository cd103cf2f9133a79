"""peftbench's ``slurm`` launcher (conf/hydra/launcher/slurm.yaml), registered as a Hydra plugin.

Hydra instantiates launchers only from the ``hydra_plugins`` namespace (hydra/core/plugins.py,
``is_in_toplevel_plugins_module``), hence this module; the code is in peftbench/launch/slurm.py.
"""

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
    SlurmLauncher as SubmititSlurmLauncher,
)

from peftbench.launch.slurm import SweepSurvivor


class SlurmLauncher(SweepSurvivor, SubmititSlurmLauncher):
    """Hydra's submitit SLURM launcher that finishes its sweep whatever its jobs do."""
