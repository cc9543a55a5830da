"""Domain exceptions, every one of them in one place.

Every message says what was expected and what was got, so a user can act on one line.
Library messages name values and settings, not command-line flags: the command-line
front ends (``rtserver``, ``feedback-display``) add those.
"""


class RtfmriError(Exception):
    """Base class of every error this project raises on purpose.

    Parameters
    ----------
    message : str
        What was expected and what was got.
    setting : str or None
        The setting the user can change to fix it (``"tr"``, ``"roi.mask"``, ...): a
        command-line front end names its own option for it.
    """

    def __init__(self, message: str = "", *, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


class ProtocolError(RtfmriError, ValueError):
    """A message on a socket does not follow the wire protocol."""


class InputError(RtfmriError, ValueError):
    """A file or folder given by the user cannot be read as what it should be."""


class IncompleteFileError(InputError):
    """A file is still being written (shorter than its header promises): try it again later."""


class ForeignFileError(InputError):
    """Not an fMRI image this system reads (text, non-image DICOM, localizer, mask): skip it."""


class ConfigError(RtfmriError, ValueError):
    """A configuration, paradigm or option value is invalid."""


class StateError(RtfmriError, RuntimeError):
    """An object was used before it was ready (for example, a stage before ``fit``)."""


class TransportError(RtfmriError, RuntimeError):
    """A socket could not be bound, or a peer did not answer in time."""


class DisplayError(RtfmriError, RuntimeError):
    """The display could not be set up (no window, no screen, unwritable output folder)."""
