"""The one usage-error type of the three command lines.

A UsageError is the user's to fix (a bad flag, a missing or malformed input,
an output in the way): the CLI prints its message in one line and exits with
EXIT_USAGE, having written nothing. Anything else is a failure of the job or a
bug and keeps its traceback: catch UsageError, never ValueError broadly, or
an internal bug exits as "bad input". It subclasses ValueError only so that
callers written against the older ValueError-based errors keep working.
"""

from __future__ import annotations

EXIT_USAGE = 2


class UsageError(ValueError):
    """Bad input or arguments: reported in one line, exit code EXIT_USAGE, nothing written."""
