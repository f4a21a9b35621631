"""The one exception type iclgd raises for bad input.

`IclgdError` subclasses `ValueError`, so library users can catch either. The CLI turns it into
one line on stderr and exit status 2 (no traceback). Messages say what was wrong and what to do.
"""

from __future__ import annotations


class IclgdError(ValueError):
    """Bad input to iclgd: the message names what was wrong and what to do about it.

    Example:
        >>> try:
        ...     act_name("no_such_hook", 0)
        ... except IclgdError as err:
        ...     print(str(err).split(":")[0])
        unknown hook name 'no_such_hook'
    """


def first_line(err: BaseException, limit: int | None = None) -> str:
    """The first non-empty line of an exception's message (its type name when it has none),
    cut to `limit` characters: what a one-line error report shows of an underlying exception."""
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:limit]
