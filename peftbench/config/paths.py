"""Where peftbench's own files are, in a source checkout and in an installed wheel alike.

A checkout keeps ``conf/`` at the top level, beside ``peftbench/`` (the design card's layout);
a wheel ships the same folder as ``peftbench/conf`` (pyproject.toml maps it). Every module
that reads a preset or a method YAML asks here instead of walking up from its own file.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]

#: The source checkout peftbench runs from, or None for an installed wheel: records take
#: their git SHA from it, and only from it.
SOURCE_ROOT: Path | None = (
    PACKAGE_DIR.parent if (PACKAGE_DIR.parent / "conf" / "config.yaml").is_file() else None
)

#: The packaged configuration: config.yaml and the method/ model/ task/ ... groups.
CONF_DIR = SOURCE_ROOT / "conf" if SOURCE_ROOT else PACKAGE_DIR / "conf"
