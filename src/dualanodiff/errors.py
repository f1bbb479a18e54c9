"""Errors the user can act on.

Every problem with the user's input (files, options, checkpoints) is raised as an
:class:`InputError` whose message names the file or option and the problem, so the
CLI can print it as one line instead of a traceback from deep inside torch.
"""


class InputError(ValueError):
    """Bad user input: the message names the file or option and says what is wrong."""
