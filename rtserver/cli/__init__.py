"""The ``rtserver`` command: serve, send, replay, keys, simulate, train, demo.

:mod:`rtserver.cli.parser` builds the options, :mod:`rtserver.cli.commands` runs each
subcommand; this module is the entry point. Errors on bad input are one line on stderr
(``rtserver: error: ...``, naming the option that fixes them) and a non-zero exit, never a
traceback. The command line is the only place that knows option names: library errors name
the setting (``setting=``) and :data:`SETTING_OPTIONS` maps it to its option.
"""

from __future__ import annotations

import logging
import sys

from rtserver.cli.parser import build_parser
from rtserver.errors import RtfmriError

__all__ = ["SETTING_OPTIONS", "build_parser", "error_line", "main"]


#: The option of this command that changes a setting named by an error (``setting=``).
SETTING_OPTIONS = {
    "tr": "--tr", "to": "--to", "n_volumes": "--n-volumes", "roi.mask": "--roi",
    "roi.target": "--target", "paradigm": "--paradigm", "series": "--series",
    "watch": "--watch", "motion.reference": "--reference",
    "motion.reference_index": "--reference-index", "decoder.model": "--model",
    "format": "--format", "slices": "--slices", "restart": "--restart", "out": "--out",
    "roi.t1w": "--t1w",
    "network.curve": "--curve", "network.insecure": "--insecure",
}


def error_line(exc: RtfmriError) -> str:
    """Return the one line printed for an error: its message and the option(s) that fix it.

    ``setting`` may name several settings, comma-separated, any of which fixes the error.
    """
    message = " ".join(str(exc).split())
    settings = (getattr(exc, "setting", None) or "").split(",")
    options = [SETTING_OPTIONS[name] for name in settings if name in SETTING_OPTIONS]
    if not options:
        return message
    if len(options) == 1:
        return f"{message} (option {options[0]})"
    return f"{message} (options {' or '.join(options)})"


def main(argv: list[str] | None = None) -> int:
    """Run the ``rtserver`` command; return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="rtserver: %(message)s", stream=sys.stderr)
    try:
        return args.func(args)
    except RtfmriError as exc:
        print("rtserver: error: " + error_line(exc), file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"rtserver: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "),
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rtserver: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
