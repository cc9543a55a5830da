"""Domain exceptions, in one place.

Every message says what was expected and what was got, so a user can act on one line.
"""


class RtfmriError(Exception):
    """Base class of every error this project raises on purpose."""


class ProtocolError(RtfmriError, ValueError):
    """A message on a socket does not follow the wire protocol."""


class InputError(RtfmriError, ValueError):
    """A file or folder given by the user cannot be read as what it should be."""


class ConfigError(RtfmriError, ValueError):
    """A configuration or paradigm file is invalid."""


class StateError(RtfmriError, RuntimeError):
    """An object was used before it was ready (for example, a stage before ``fit``)."""


class TransportError(RtfmriError, RuntimeError):
    """A socket could not be bound, or a peer did not answer in time."""
