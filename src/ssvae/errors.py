"""The one exception type a user sees.

Anything that goes wrong because of the user's input (a missing file, a corrupt download, an
impossible option) raises :class:`SsvaeError` with a message that names the thing and says what to
do. The command line prints that message on one line and exits with status 2, never a traceback.
"""


class SsvaeError(Exception):
    """A problem the user can fix; ``str(error)`` is the whole message."""


class TrainingDiverged(SsvaeError):
    """Too many training steps in a row had a non-finite loss or gradient."""


class Interrupted(SsvaeError):
    """Ctrl-C or SIGTERM: the run stopped between two steps, after writing a checkpoint."""
