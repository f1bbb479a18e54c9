"""Errors the user can act on.

Every problem with the user's input (files, options, checkpoints) is raised as an
:class:`InputError` whose message names the file or option and the problem, so the
CLI can print it as one line instead of a traceback from deep inside torch.
"""


class InputError(ValueError):
    """Bad user input: the message names the file or option and says what is wrong."""


def listed(problems: list[str], most: int = 3) -> str:
    """Several problems as one line ("a; b; c; and 4 more"): the CLI's errors are one line each, and a
    user fixing a folder needs the first few named, not a hundred."""
    shown = problems[:most] + ([f"and {len(problems) - most} more"] if len(problems) > most else [])
    return "; ".join(shown)
