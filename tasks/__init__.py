"""The task catalogue: task kinds, the readers of each data source, and one card per task.

Importing this package registers every task kind and reader.
"""

from tasks import (  # noqa: F401  (registration side effects)
    classification,
    readers,
    synthetic,
    token_classification,
    translation,
)
from tasks.base import TASK_KINDS, Task, build_task

__all__ = ["TASK_KINDS", "Task", "build_task"]
