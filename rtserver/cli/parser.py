"""The ``rtserver`` command's options: one subparser per command, each with its help."""

from __future__ import annotations

import argparse
from pathlib import Path

from rtserver import __version__
from rtserver.cli.commands import (
    FREE_PORT,
    cmd_demo,
    cmd_keys,
    cmd_replay,
    cmd_send,
    cmd_serve,
    cmd_simulate,
    cmd_train,
)
from rtserver.protocol import DEFAULT_FEEDBACK, DEFAULT_RESULTS, DEFAULT_VOLUMES
from rtserver.scanner.readers import FORMATS

DESCRIPTION = """\
Real-time fMRI neurofeedback of cortico-striatal drug-versus-food cue reactivity.

  rtserver serve    --out DIR               run the server for one run
  rtserver send     SOURCE                  scanner bridge: send a series to a server
  rtserver replay   SOURCE --out DIR        serve + send in one command
  rtserver keys     DIR                     make CURVE certificates for the server and clients
  rtserver simulate --out DIR ...           write a synthetic BIDS session with known truth
  rtserver train    --bids DIR --subject ID --out FILE
                                            train a subject's decoder from their localizer
  rtserver demo     --out DIR               simulate, serve, display and replay a session

All addresses are ZeroMQ endpoints (tcp://host:port) and default to 127.0.0.1 only.
Binding beyond the loopback needs --curve DIR (encrypted, authenticated links) or --insecure.
"""



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
    _add_security(serve, server=True)
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
    _add_security(send, server=False)
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
    replay.add_argument("--volumes", metavar="ADDR",
                        help=f"volume channel to bind (default {FREE_PORT}: a free loopback "
                        "port; the endpoints bound are logged)")
    _add_output_endpoints(replay, FREE_PORT, FREE_PORT)
    _add_security(replay, server=True)
    replay.set_defaults(func=cmd_replay)

    keys = commands.add_parser(
        "keys", help="make CURVE certificates for the server and its clients",
        description="Write ZeroMQ CURVE certificates (pyzmq's format) into DIR: server.key(_secret) "
        "and client_NAME.key(_secret) per client. Existing ones are kept (a rerun adds only "
        "missing clients). Who needs which file: docs/protocol.md.")
    keys.add_argument("folder", type=Path, metavar="DIR", help="folder of the certificates")
    keys.add_argument("--client", action="append", metavar="NAME", dest="clients",
                      help="make a certificate for client NAME (repeatable; default: "
                      "bridge, display and results)")
    keys.set_defaults(func=cmd_keys)

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
    parser.add_argument("--restart", action="store_true",
                        help="when --out already holds this run, record a new attempt "
                        "(attempt-<k>/) beside it; without it an unfinished run is resumed "
                        "and a finished one refused (nothing is ever overwritten)")


def _add_security(parser: argparse.ArgumentParser, server: bool) -> None:
    if server:
        parser.add_argument("--curve", metavar="DIR",
                            help="encrypt and authenticate every channel with the CURVE "
                            "certificates in DIR (from `rtserver keys`): only the clients whose "
                            "client_*.key is in DIR get in")
        parser.add_argument("--insecure", action="store_true", default=None,
                            help="allow binding beyond the loopback without --curve")
    else:
        parser.add_argument("--curve", metavar="DIR",
                            help="encrypt and authenticate the link with the CURVE "
                            "certificates in DIR: server.key and client_bridge.key_secret")


def _add_output_endpoints(parser: argparse.ArgumentParser, feedback: str = DEFAULT_FEEDBACK,
                          results: str = DEFAULT_RESULTS) -> None:
    parser.add_argument("--feedback", metavar="ADDR",
                        help=f"feedback channel to bind (PUB, default {feedback})")
    parser.add_argument("--results", metavar="ADDR",
                        help=f"results channel to bind (REP, default {results})")


def _add_pacing(parser: argparse.ArgumentParser, default_asap: bool = False) -> None:
    parser.add_argument("--tr", type=float, metavar="S",
                        help="the TR in seconds, for files that state none or a wrong one; "
                        "a replay is paced at it (with --watch volumes go as they come)")
    pacing = parser.add_mutually_exclusive_group()
    pacing.add_argument("--speed", type=float, metavar="X",
                        help="send X times faster than the acquisition TR")
    pacing.add_argument("--asap", action="store_true", default=default_asap,
                        help="send as fast as the server acknowledges")
