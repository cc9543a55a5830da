"""``feedback-display``: the participant display for one run.

Exit codes: 0 when the run ended (the paradigm's end, the server's end-of-run message,
Escape, SIGINT/SIGTERM); 1 when the run never started (no trigger and no feedback event
within ``--timeout``); 2 on bad input (paradigm, pictures, address, options) or when no
window can be opened -- all checked before the window opens. Every error is one line on
stderr, ``feedback-display: error: ...``, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import NoReturn

from feedback_display.options import DisplayOptions
from feedback_display.subscriber import CURVE_CLIENT, DEFAULT_SERVER, check_endpoint
from rtserver.curve import ClientKeys
from rtserver.errors import RtfmriError
from rtserver.paradigm import Paradigm

PROG = "feedback-display"
log = logging.getLogger(__name__)


class _OneLineParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line, like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"should be a number of seconds. Got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"should be > 0. Got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"should be a positive integer. Got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"should be a positive integer. Got {text!r}")
    return value


def _keys(text: str) -> tuple[str, ...]:
    keys = tuple(key.strip().lower() for key in text.split(",") if key.strip())
    if not keys:
        raise argparse.ArgumentTypeError(f"should be one or more key names, comma-separated. "
                                         f"Got {text!r}")
    return keys


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``feedback-display``."""
    parser = _OneLineParser(
        prog=PROG,
        description="Show the participant the neurofeedback thermometer and the paradigm's "
                    "instructions, from the server's feedback channel.",
    )
    parser.add_argument("--paradigm", required=True, metavar="FILE",
                        help="paradigm file (TOML/YAML), or a shipped name: regulation, "
                             "localizer")
    parser.add_argument("--server", default=DEFAULT_SERVER, metavar="ADDR",
                        help=f"the server's feedback endpoint (default {DEFAULT_SERVER})")
    parser.add_argument("--results", metavar="ADDR",
                        help="the server's results endpoint: asked before the run whether "
                             "volumes were processed (a restarted display then rejoins the "
                             "run); default: not asked")
    parser.add_argument("--curve", type=Path, metavar="DIR",
                        help="encrypt and authenticate the feedback channel with the CURVE "
                             f"certificates in DIR: server.key and "
                             f"client_{CURVE_CLIENT}.key_secret (from `rtserver keys`)")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="write *_events.tsv and *_desc-display.json here; a display "
                             "restarted with the same folder appends and rejoins the run")
    parser.add_argument("--windowed", action="store_true",
                        help="a 1024x768 window instead of full screen")
    parser.add_argument("--screenshots", type=Path, metavar="DIR",
                        help="save one PNG per feedback event (volume-0005.png) here")
    parser.add_argument("--subject", default="01", metavar="ID",
                        help="BIDS subject label of the output names (default 01)")
    parser.add_argument("--run", type=_positive_int, default=1, metavar="N",
                        help="BIDS run number of the output names (default 1)")
    parser.add_argument("--timeout", type=_positive_float, default=120.0, metavar="S",
                        help="seconds to wait for the run to start (default 120)")
    parser.add_argument("--start-on", choices=("auto", "trigger", "server"), default="auto",
                        help="what starts the run: the scanner's trigger key, the server's "
                             "first feedback event (a replay), or whichever comes first "
                             "(default auto)")
    parser.add_argument("--trigger-key", type=_keys, default=("5",), metavar="KEYS",
                        help="key(s) the scanner trigger arrives as, comma-separated "
                             "(default 5)")
    parser.add_argument("--pictures", type=Path, metavar="DIR",
                        help="cue pictures: a folder with drug/, food/ and neutral/ "
                             "(PNG or JPEG); default the paradigm's, else the shipped "
                             "placeholders")
    parser.add_argument("--left-keys", type=_keys, default=("left", "1"), metavar="KEYS",
                        help="keys moving the rating marker left (default left,1)")
    parser.add_argument("--right-keys", type=_keys, default=("right", "2"), metavar="KEYS",
                        help="keys moving the rating marker right (default right,2)")
    parser.add_argument("--confirm-keys", type=_keys, default=("space", "return", "3"),
                        metavar="KEYS", help="keys confirming a rating (default space,return,3)")
    parser.add_argument("--stale-after", type=_positive_float, metavar="S",
                        help="seconds without feedback before the bar rests in its neutral "
                             "state (default 2.5 TR)")
    parser.add_argument("--skip-ratings", action="store_true",
                        help="leave out the craving ratings before and after the run")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    return parser


def _install_stop_handlers(stop: threading.Event) -> None:
    def request_stop(signum: int, frame: object) -> None:
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, request_stop)


def run(args: argparse.Namespace) -> int:
    """Load the paradigm, open the display, show the run; return the exit code."""
    paradigm = Paradigm.from_file(args.paradigm)
    check_endpoint(args.server)
    if args.curve is not None:
        ClientKeys.load(args.curve, CURVE_CLIENT)  # unreadable keys fail before the window
    options = DisplayOptions(
        fullscreen=not args.windowed, timeout=args.timeout, screenshots=args.screenshots,
        out=args.out, subject=args.subject, run=args.run, start_on=args.start_on,
        trigger_keys=args.trigger_key, left_keys=args.left_keys,
        right_keys=args.right_keys, confirm_keys=args.confirm_keys,
        stale_after=args.stale_after, skip_ratings=args.skip_ratings,
        pictures=args.pictures, results=args.results, curve=args.curve,
    )
    # The display is imported only now (PsychoPy only when the window opens): bad input
    # above fails fast, without opening a window.
    from feedback_display.display import FeedbackDisplay
    stop = threading.Event()
    _install_stop_handlers(stop)
    # The constructor checks the pictures and output folders: still no window.
    display = FeedbackDisplay(paradigm, args.server, options, stop=stop)
    with display:
        result = display.run()
    summary = result.summary
    if summary["n_frames"]:
        log.info("run ended (%s): %d frames, interval median %s ms, p95 %s ms, p99 %s ms, "
                 "max %s ms; %d dropped frames (%s pacing); %d feedback events received, %d "
                 "shown, %d malformed messages", result.ended_by, summary["n_frames"],
                 summary["frame_interval_ms_median"], summary["frame_interval_ms_p95"],
                 summary["frame_interval_ms_p99"], summary["frame_interval_ms_max"],
                 summary["dropped_frames"], summary["paced_by"],
                 summary["n_feedback_events_received"], summary["n_feedback_events_shown"],
                 summary["n_malformed_messages"])
    if result.ended_by == "no_start":
        waited_for = {"trigger": f"trigger key ({', '.join(args.trigger_key)})",
                      "server": f"feedback event from {args.server}",
                      "auto": f"trigger key ({', '.join(args.trigger_key)}) and no feedback "
                              f"event from {args.server}"}[args.start_on]
        _error(f"no {waited_for} within {args.timeout:g} s.")
        return 1
    return 0


def _error(message: str) -> None:
    print(f"{PROG}: error: " + " ".join(message.split()), file=sys.stderr)


def _configure_logging(level: int) -> None:
    """Log this package's messages to stderr.

    Not through the root logger: PsychoPy's dependencies log chatter there.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(message)s"))
    package = logging.getLogger("feedback_display")
    package.handlers[:] = [handler]
    package.setLevel(level)
    package.propagate = False


def main(argv: list[str] | None = None) -> int:
    """Run the ``feedback-display`` command; return its exit code."""
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    _configure_logging(level)
    try:
        return run(args)
    except RtfmriError as exc:
        _error(str(exc))
        return 2
    except OSError as exc:
        _error(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
