"""Rich progress bars: the one place their columns and console are chosen.

Every long-running command (training a prior, reconstructing a volume) shows the same kind
of bar::

    DESCRIPTION  ━━━━━━━━━━━━━━━━  12/50  [INFO]  [ELAPSED]  REMAINING

built by :func:`make_bar`.  rich is imported only when a bar is built, so code that never
shows one (a callback, a log, a non-TTY run) does not pay for it.

>>> bar = make_bar("train", info=True, stderr=False)   # doctest: +SKIP
>>> with bar:                                            # doctest: +SKIP
...     task = bar.add_task("train", total=100, completed=0, info="")
...     bar.update(task, completed=10, info="loss 0.12")
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["make_bar", "stderr_is_tty"]


def make_bar(description: str = "{task.description}", *, info: bool = False, elapsed: bool = False,
             stderr: bool = True, transient: bool = False) -> Any:
    """A (not yet started) :class:`rich.progress.Progress` with medrecon's columns.

    Columns, in order: ``description`` (a rich format string, e.g. ``"{task.description}"``, or
    a fixed label), the bar, ``done/total``, the task field ``info`` (``info=True``: each task
    is added with an ``info=...`` field, updated with ``update(task, info=...)``), the elapsed
    time (``elapsed=True``) and the estimated time remaining.

    ``stderr=True`` draws on a console on standard error (the reconstruction engine);
    ``stderr=False`` on rich's default console (standard output; ``train-prior``).
    ``transient=True`` clears the bar when it stops.  Start and stop it with
    ``start()``/``stop()`` or use it as a context manager.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns: list[Any] = [TextColumn(description), BarColumn(), MofNCompleteColumn()]
    if info:
        columns.append(TextColumn("{task.fields[info]}"))
    if elapsed:
        columns.append(TimeElapsedColumn())
    columns.append(TimeRemainingColumn())
    if stderr:
        from rich.console import Console

        return Progress(*columns, console=Console(stderr=True), transient=transient)
    return Progress(*columns, transient=transient)


def stderr_is_tty() -> bool:
    """Whether standard error is a terminal (where a bar, rather than log lines, is shown)."""
    return sys.stderr.isatty()
