"""The ``rtserver`` command: serve, send, replay, simulate, demo.

Errors on bad input are one line on stderr (``rtserver: error: ...``) and a non-zero exit,
never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from rtserver import __version__
from rtserver.config import load_config
from rtserver.errors import InputError, RtfmriError
from rtserver.protocol import DEFAULT_FEEDBACK, DEFAULT_RESULTS, DEFAULT_VOLUMES
from rtserver.scanner.readers import FORMATS

log = logging.getLogger("rtserver")

DESCRIPTION = """\
Real-time fMRI neurofeedback of cortico-striatal drug-versus-food cue reactivity.

  rtserver serve    --out DIR               run the server for one run
  rtserver send     SOURCE                  scanner bridge: send a series to a server
  rtserver replay   SOURCE --out DIR        serve + send in one command
  rtserver simulate --out DIR ...           write a synthetic BIDS session with known truth
  rtserver train    --bids DIR --subject ID --out FILE
                                            train a subject's decoder from their localizer
  rtserver demo     --out DIR               simulate, serve, display and replay a session

All addresses are ZeroMQ endpoints (tcp://host:port) and default to 127.0.0.1 only.
"""


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``rtserver`` command."""
    parser = argparse.ArgumentParser(
        prog="rtserver", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"rtserver {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every volume")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = commands.add_parser(
        "serve", help="run the server for one run",
        description="Receive volumes from a scanner bridge, compute and publish feedback for "
        "each, and record the run under --out. Ends after the bridge's last volume, after "
        "--n-volumes, or on Ctrl-C / SIGTERM (everything received is flushed first).")
    serve.add_argument("--out", required=True, type=Path, help="output folder of the run")
    _add_run_options(serve)
    serve.add_argument("--n-volumes", type=int, metavar="N",
                       help="end the run after N volumes")
    serve.add_argument("--volumes", metavar="ADDR", help=f"volume channel to bind "
                       f"(default {DEFAULT_VOLUMES})")
    _add_output_endpoints(serve)
    serve.set_defaults(func=cmd_serve)

    send = commands.add_parser(
        "send", help="scanner bridge: send a series to a server",
        description="Read SOURCE and send its volumes to a server, each resent until "
        "acknowledged. SOURCE is a scanner export folder (Siemens mosaic or XA enhanced "
        "DICOM, GE or Philips per-slice DICOM, Philips PAR/REC, 3D NIfTI files), a 4D NIfTI "
        "or a recorded run folder; the layout is detected from the files (--format forces "
        "one). Without --watch the series is replayed, paced at the TR unless told "
        "otherwise. With --watch SOURCE is the folder the scanner is writing into: each "
        "volume is sent as soon as its files are complete, in acquisition order. Patient "
        "identity (names, IDs, birth date, file names) is never sent.")
    send.add_argument("source", type=Path, metavar="SOURCE",
                      help="export folder, 4D NIfTI, or recorded run folder")
    send.add_argument("--to", default=DEFAULT_VOLUMES, metavar="ADDR",
                      help=f"the server's volume channel (default {DEFAULT_VOLUMES})")
    send.add_argument("--format", choices=FORMATS, metavar="FORMAT",
                      help="read the files as this layout instead of detecting it: "
                      + ", ".join(FORMATS))
    _add_pacing(send)
    send.add_argument("--timeout", type=float, default=30.0, metavar="S",
                      help="give up after S seconds without an acknowledgement (default 30)")
    live = send.add_argument_group("watching a live export folder")
    live.add_argument("--watch", action="store_true",
                      help="follow the folder as the scanner writes into it (inotify)")
    live.add_argument("--poll", type=float, metavar="S",
                      help="with --watch: look every S seconds instead of using inotify "
                      "(network shares, where file events do not arrive)")
    live.add_argument("--series", type=int, metavar="N",
                      help="with --watch: follow DICOM series number N (default: the first "
                      "series that arrives)")
    live.add_argument("--slices", type=int, metavar="N",
                      help="slices per volume, for per-slice files that do not state it")
    live.add_argument("--n-volumes", type=int, metavar="N",
                      help="with --watch: end the run after N volumes")
    live.add_argument("--idle-timeout", type=float, default=60.0, metavar="S",
                      help="with --watch: end the run when no file has come for S seconds "
                      "(default 60)")
    live.add_argument("--missing-after", type=float, metavar="S",
                      help="with --watch: report a volume missing (and go on) once a later "
                      "one has been complete for S seconds (default 2 TR)")
    send.set_defaults(func=cmd_send)

    replay = commands.add_parser(
        "replay", help="serve + send in one command",
        description="Replay a recorded session (or any SOURCE `send` reads) through the same "
        "server code as a live session, writing the run's outputs under --out.")
    replay.add_argument("source", type=Path, metavar="SOURCE",
                        help="a recorded run folder or any SOURCE `rtserver send` reads; paced at "
                        "its TR unless --tr, --speed or --asap")
    replay.add_argument("--out", required=True, type=Path, help="output folder of the run")
    _add_run_options(replay)
    _add_pacing(replay, default_asap=False)
    replay.add_argument("--volumes", metavar="ADDR", default="tcp://127.0.0.1:*",
                        help="volume channel to bind (default: a free loopback port)")
    _add_output_endpoints(replay)
    replay.set_defaults(func=cmd_replay)

    simulate = commands.add_parser(
        "simulate", help="write a synthetic BIDS session with known ground truth",
        description="Write a BIDS dataset of a simulated subject (or cohort): a brain-shaped "
        "EPI phantom, block-design responses in cortico-striatal ROIs that follow the group, "
        "noise and known head motion, plus the truth under derivatives/simulator.")
    simulate.add_argument("--out", required=True, type=Path, help="BIDS dataset folder")
    simulate.add_argument("--subject", default="01", help="subject label (default 01)")
    simulate.add_argument("--group", choices=("patient", "control"), default="patient")
    simulate.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    simulate.add_argument("--cohort", metavar="P,C",
                          help="simulate P patients and C controls instead of one subject")
    simulate.add_argument("--paradigm", default="localizer,regulation",
                          help="paradigm files or shipped names, comma-separated; each is a "
                               "task of the session (default localizer,regulation)")
    simulate.add_argument("--runs", type=int, default=1,
                          help="runs of each paradigm (default 1)")
    simulate.add_argument("--shape", default="64,64,36", help="EPI matrix (default 64,64,36)")
    simulate.add_argument("--voxel", type=float, default=3.5, help="voxel size, mm (3.5)")
    simulate.set_defaults(func=cmd_simulate)

    train = commands.add_parser(
        "train", help="train a subject's drug-vs-food decoder from their localizer run(s)",
        description="Run the subject's localizer run(s) through the online pipeline (motion, "
        "ROIs, signal model), label volumes drug or food from the BIDS events (shifted by the "
        "haemodynamic lag), choose the classifier's regularisation by nested blocked "
        "cross-validation, print the cross-validated AUC and accuracy, and write the model "
        "(skops) and its card (.json beside it).")
    train.add_argument("--bids", required=True, type=Path, help="BIDS dataset folder")
    train.add_argument("--subject", required=True, help="subject label (e.g. P01)")
    train.add_argument("--out", required=True, type=Path, help="model file to write (.skops)")
    train.add_argument("--config", type=Path, metavar="FILE",
                       help="TOML configuration ([motion], [roi], [signal])")
    train.add_argument("--roi", metavar="FILE",
                       help="ROI label image in the EPI space of the first run's first volume "
                       "(default: the MNI atlases registered to that volume)")
    train.add_argument("--t1w", type=Path, metavar="SOURCE",
                       help="the session's T1-weighted image (NIfTI or DICOM folder): atlas "
                       "ROIs are registered through it (more robust than from the EPI alone)")
    train.add_argument("--task", default="localizer", help="BIDS task to train on (localizer)")
    train.add_argument("--run", type=int, action="append", metavar="N", dest="runs",
                       help="use run N only (repeatable; default: every run of the task)")
    train.add_argument("--lag", type=float, default=4.0, metavar="S",
                       help="haemodynamic lag in seconds (default 4)")
    train.set_defaults(func=cmd_train)

    demo = commands.add_parser(
        "demo", help="simulate, serve, display and replay a session",
        description="Simulate a short session, start the server, the display and the scanner "
        "bridge as separate processes, replay the session at an accelerated TR, and print "
        "where the outputs and the display's screenshots are.")
    demo.add_argument("--out", type=Path, default=Path("demo-output"),
                      help="output folder (default demo-output)")
    demo.add_argument("--speed", type=float, default=8.0,
                      help="replay this many times faster than real time (default 8)")
    demo.add_argument("--no-display", action="store_true", help="run without the display")
    demo.set_defaults(func=cmd_demo)
    return parser


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, metavar="FILE", help="TOML configuration file")
    parser.add_argument("--roi", metavar="FILE",
                        help="ROI label image in EPI space (with a .tsv of names beside it), or "
                        "'atlas': the MNI atlases registered to the reference volume")
    parser.add_argument("--t1w", type=Path, metavar="SOURCE",
                        help="with --roi atlas: the session's T1-weighted image (NIfTI or "
                        "DICOM folder), through which the atlases are registered")
    parser.add_argument("--target", metavar="NAME", help="ROI that drives the feedback "
                        "without a decoder")
    parser.add_argument("--model", metavar="FILE",
                        help="trained decoder (skops, from `rtserver train`) that drives the "
                        "feedback; it brings its ROIs and reference volume")
    parser.add_argument("--feedback-type", choices=("classifier", "bias"),
                        help="with --model: the multivoxel classifier's P(drug) (default) or "
                        "the univariate drug-bias index")
    parser.add_argument("--paradigm", metavar="FILE",
                        help="paradigm file or shipped name; its fixation blocks form the "
                        "feedback baseline")
    parser.add_argument("--reference", metavar="SOURCE",
                        help="register every volume to a volume of SOURCE (a NIfTI file, an "
                        "export folder or a recorded run, e.g. an earlier run of the session) "
                        "instead of the run's first volume")
    parser.add_argument("--reference-index", type=int, metavar="N",
                        help="volume N of --reference (default 0)")
    parser.add_argument("--fd-threshold", type=float, metavar="MM",
                        help="censor volumes whose framewise displacement exceeds MM "
                        "(default 0.5)")
    parser.add_argument("--reslice", action="store_true", default=None,
                        help="also record the motion-corrected run "
                        "(*_desc-realigned_bold.nii.gz; costs time in the recorder thread)")
    parser.add_argument("--subject", help="BIDS subject label of the outputs (default 01)")
    parser.add_argument("--task", help="BIDS task label of the outputs (default regulation)")
    parser.add_argument("--run", type=int, help="BIDS run number of the outputs (default 1)")
    parser.add_argument("--wait-display", type=float, default=0.0, metavar="S",
                        help="wait up to S seconds for a display to subscribe before "
                        "taking volumes")


def _add_output_endpoints(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--feedback", metavar="ADDR",
                        help=f"feedback channel to bind (PUB, default {DEFAULT_FEEDBACK})")
    parser.add_argument("--results", metavar="ADDR",
                        help=f"results channel to bind (REP, default {DEFAULT_RESULTS})")


def _add_pacing(parser: argparse.ArgumentParser, default_asap: bool = False) -> None:
    parser.add_argument("--tr", type=float, metavar="S",
                        help="the TR in seconds, for files that state none or a wrong one; "
                        "a replay is paced at it (with --watch volumes go as they come)")
    pacing = parser.add_mutually_exclusive_group()
    pacing.add_argument("--speed", type=float, metavar="X",
                        help="send X times faster than the acquisition TR")
    pacing.add_argument("--asap", action="store_true", default=default_asap,
                        help="send as fast as the server acknowledges")


# --------------------------------------------------------------------------- commands
def _config_from(args: argparse.Namespace):
    config = load_config(args.config)
    return config.with_overrides(
        network={"volumes": getattr(args, "volumes", None),
                 "feedback": getattr(args, "feedback", None),
                 "results": getattr(args, "results", None)},
        run={"subject": args.subject, "task": args.task, "run": args.run},
        roi={"mask": args.roi, "target": args.target, "t1w": _t1w(args)},
        motion={"reference": args.reference, "reference_index": args.reference_index,
                "fd_threshold": args.fd_threshold, "reslice": args.reslice},
        feedback={"paradigm": args.paradigm},
        decoder={"model": args.model, "feedback": args.feedback_type},
    )


def _t1w(args: argparse.Namespace) -> str | None:
    """``--t1w`` as a string (``None`` when not given)."""
    return str(args.t1w) if getattr(args, "t1w", None) is not None else None


def _check_tr(args: argparse.Namespace) -> None:
    if args.tr is not None and not args.tr > 0:
        raise InputError(f"--tr should be > 0 seconds. Got {args.tr}.")


def _interval(args: argparse.Namespace, tr: float) -> float | None:
    """Seconds between volumes of a replay (``None``: as fast as possible).

    ``tr`` is the source's TR, which already is ``--tr`` when that was given.
    """
    if args.asap:
        return None
    if args.speed is not None:
        if args.speed <= 0:
            raise InputError(f"--speed should be > 0. Got {args.speed}.")
        return tr / args.speed
    return tr


def _handle_signals(server) -> None:
    def stop(signum: int, _frame: object) -> None:
        log.info("received %s; finishing the run", signal.Signals(signum).name)
        server.stop()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)


def cmd_serve(args: argparse.Namespace) -> int:
    """``rtserver serve``."""
    from rtserver.service.server import Server

    with Server(_config_from(args), args.out, n_volumes=args.n_volumes,
                wait_display=args.wait_display) as server:
        _handle_signals(server)
        server.run()
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    """``rtserver send``."""
    from tqdm import tqdm

    from rtserver.scanner.sources import open_source
    from rtserver.service.bridge import ScannerBridge

    if args.watch:
        return _send_watched(args)
    for option in ("poll", "series", "n_volumes"):
        if getattr(args, option) is not None:
            raise InputError(f"--{option.replace('_', '-')} needs --watch.")
    _check_tr(args)
    source = open_source(args.source, tr=args.tr, file_format=args.format, n_slices=args.slices)
    interval = _interval(args, source.tr)
    log.info("sending %d volumes of %s (%s) to %s, %s", source.n_volumes, source.path,
             source.kind, args.to,
             "as fast as possible" if interval is None else f"one every {interval:g} s")
    with ScannerBridge(args.to, timeout=args.timeout) as bridge, tqdm(
        total=source.n_volumes, unit="vol", disable=None, desc="send", leave=False
    ) as progress:
        report = bridge.send_all(source, interval=interval, progress=progress)
    log.info("sent %d volumes, %d acknowledged, %d resends, %d rejected", report.n_sent,
             report.n_acknowledged, report.n_resent, len(report.rejected))
    return 1 if report.rejected else 0


def _send_watched(args: argparse.Namespace) -> int:
    import threading

    from tqdm import tqdm

    from rtserver.scanner.watch import watch_and_send
    from rtserver.service.bridge import ScannerBridge

    if args.speed is not None or args.asap:
        raise InputError("--speed and --asap pace a replay; with --watch volumes go as the "
                         "scanner writes them.")
    _check_tr(args)
    if args.poll is not None and args.poll <= 0:
        raise InputError(f"--poll should be > 0 seconds. Got {args.poll}.")
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s; ending the run", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    log.info("watching %s (%s); sending to %s", args.source,
             f"polling every {args.poll:g} s" if args.poll else "file events", args.to)
    with ScannerBridge(args.to, timeout=args.timeout) as bridge, tqdm(
        unit="vol", disable=None, desc="watch", leave=False
    ) as progress:
        report = watch_and_send(
            args.source, bridge.send_volume, poll=args.poll, file_format=args.format,
            n_slices=args.slices, series_number=args.series, n_volumes=args.n_volumes,
            idle_timeout=args.idle_timeout, missing_after=args.missing_after, tr=args.tr,
            stop=stop, progress=progress)
        bridge.send_end(report.n_sent + len(report.missing))
    sent = bridge.report
    log.info("sent %d volumes from %d files (%d acknowledged, %d resends, %d rejected); "
             "%d missing %s; %d files skipped", report.n_sent, report.n_files,
             sent.n_acknowledged, sent.n_resent, len(sent.rejected), len(report.missing),
             report.missing[:20], report.n_skipped)
    return 1 if sent.rejected or report.missing else 0


def cmd_replay(args: argparse.Namespace) -> int:
    """``rtserver replay``."""
    from tqdm import tqdm

    from rtserver.scanner.sources import open_source
    from rtserver.service.replay import output_prefix_from_source, replay
    from rtserver.service.server import Server

    _check_tr(args)
    source = open_source(args.source, tr=args.tr)
    entities = output_prefix_from_source(Path(source.path)) or {}
    for key, value in entities.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    server = Server(_config_from(args), args.out, wait_display=args.wait_display)
    _handle_signals(server)
    interval = _interval(args, source.tr)
    with tqdm(total=source.n_volumes, unit="vol", disable=None, desc="replay",
              leave=False) as progress:
        report, counters = replay(source, server, interval, progress=progress)
    if counters is None:
        return 1
    log.info("replayed %d volumes into %s (%d duplicates dropped, %d rejected)",
             counters.n_processed, args.out, counters.n_duplicates, len(report.rejected))
    return 1 if report.rejected else 0


def cmd_simulate(args: argparse.Namespace) -> int:
    """``rtserver simulate``."""
    from rtserver import sim as simulate

    try:
        shape = tuple(int(n) for n in args.shape.split(","))
    except ValueError:
        raise InputError(f"--shape should be three integers like 64,64,36. Got {args.shape!r}.") from None
    paradigms = [name.strip() for name in args.paradigm.split(",") if name.strip()]
    common = {"paradigm": paradigms, "shape": shape, "voxel_size": args.voxel,
              "n_runs": args.runs}
    if args.cohort:
        try:
            n_patients, n_controls = (int(n) for n in args.cohort.split(","))
        except ValueError:
            raise InputError(
                f"--cohort should be two integers P,C like 10,10. Got {args.cohort!r}."
            ) from None
        simulate.simulate_cohort(args.out, n_patients, n_controls, args.seed, **common)
    else:
        simulate.simulate_subject(args.out, args.subject, args.group, args.seed,
                                  progress=True, **common)
    log.info("wrote %s", args.out)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """``rtserver train``."""
    from rtserver.service.model_file import save_decoder
    from rtserver.train.training import train_subject

    if args.out.suffix != ".skops":
        raise InputError(f"--out should name a .skops file. Got {args.out}.")
    config = load_config(args.config).with_overrides(roi={"mask": args.roi, "t1w": _t1w(args)})
    decoder, scores = train_subject(args.bids, args.subject, config=config, task=args.task,
                                    runs=args.runs, lag=args.lag, progress=True)
    model, card = save_decoder(decoder, args.out)
    n = decoder.card["training_data"]["n_training_volumes"]
    registration = decoder.card["rois"]["registration"]
    if registration:
        print(f"atlas registration: brain-mask Dice {registration['dice']:.3f}, "
              f"intensity correlation {registration['correlation']:.3f}")
    print(f"cross-validated (nested, leave-one-block-pair-out) over {n['drug']} drug and "
          f"{n['food']} food volumes: AUC {scores.auc:.3f} (mean over folds; pooled "
          f"{scores.pooled_auc:.3f}), accuracy {scores.accuracy:.3f}, Brier {scores.brier:.3f}")
    print(f"drug-bias index: {decoder.bias_index:+.3f} % (drug minus food, mean over ROIs)")
    print(f"wrote {model} and {card}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``rtserver demo``."""
    from rtserver.demo import run_demo

    return run_demo(args.out, speed=args.speed, display=not args.no_display)


# --------------------------------------------------------------------------- entry point
#: The option of this command that changes a setting named by an error (``setting=``).
SETTING_OPTIONS = {
    "tr": "--tr", "to": "--to", "n_volumes": "--n-volumes", "roi.mask": "--roi",
    "roi.target": "--target", "paradigm": "--paradigm", "series": "--series",
    "watch": "--watch", "motion.reference": "--reference",
    "motion.reference_index": "--reference-index", "decoder.model": "--model",
    "format": "--format", "slices": "--slices", "roi.t1w": "--t1w",
}


def error_line(exc: RtfmriError) -> str:
    """The one line printed for an error: its message, and the option that changes it."""
    message = " ".join(str(exc).split())
    option = SETTING_OPTIONS.get(getattr(exc, "setting", None) or "")
    return f"{message} (option {option})" if option else message


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
