"""What each ``rtserver`` subcommand does, given its parsed options."""

from __future__ import annotations

import argparse
import logging
import signal
from pathlib import Path

from rtserver.config import NetworkConfig, load_config
from rtserver.errors import InputError

log = logging.getLogger("rtserver")

#: Where a replay binds a channel unless told otherwise: a free loopback port.
FREE_PORT = "tcp://127.0.0.1:*"


def _config_from(args: argparse.Namespace):
    config = load_config(args.config)
    return config.with_overrides(
        network={"volumes": getattr(args, "volumes", None),
                 "feedback": getattr(args, "feedback", None),
                 "results": getattr(args, "results", None),
                 "curve": getattr(args, "curve", None),
                 "insecure": getattr(args, "insecure", None)},
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


def cmd_serve(args: argparse.Namespace) -> int:
    """``rtserver serve``."""
    from rtserver.service.server import Server
    from rtserver.service.signals import stop_on_signals

    server = Server(_config_from(args), args.out, n_volumes=args.n_volumes,
                    wait_display=args.wait_display, restart=args.restart)
    with stop_on_signals(server), server:  # before binding: a signal at once ends the run
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
    with ScannerBridge(args.to, timeout=args.timeout, curve=args.curve) as bridge, tqdm(
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
    with ScannerBridge(args.to, timeout=args.timeout, curve=args.curve) as bridge, tqdm(
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
    from rtserver.service.signals import stop_on_signals

    _check_tr(args)
    source = open_source(args.source, tr=args.tr)
    entities = output_prefix_from_source(Path(source.path)) or {}
    for key, value in entities.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    # A replay binds free ports of its own unless told otherwise, so runs never collide.
    configured = load_config(args.config).network if args.config else NetworkConfig()
    for channel in ("volumes", "feedback", "results"):
        if getattr(args, channel) is None and (
                getattr(configured, channel) == getattr(NetworkConfig(), channel)):
            setattr(args, channel, FREE_PORT)
    server = Server(_config_from(args), args.out, wait_display=args.wait_display,
                    restart=args.restart)
    interval = _interval(args, source.tr)
    with stop_on_signals(server), tqdm(total=source.n_volumes, unit="vol", disable=None,
                                     desc="replay", leave=False) as progress:
        report, counters = replay(source, server, interval, progress=progress)
    if counters is None:
        return 1
    log.info("replayed %d volumes into %s (%d duplicates dropped, %d rejected)",
             counters.n_processed, args.out, counters.n_duplicates, len(report.rejected))
    return 1 if report.rejected else 0


def cmd_keys(args: argparse.Namespace) -> int:
    """``rtserver keys``."""
    from rtserver.curve import DEFAULT_CLIENTS, make_keys

    report = make_keys(args.folder, args.clients or DEFAULT_CLIENTS)
    print("\n".join([f"wrote {path}" for path in report.created]
                    + [f"kept {path} (already there)" for path in report.kept]))
    print(f"the server needs {args.folder}/server.key_secret and the client_*.key files; "
          f"each client needs server.key and its own client_NAME.key_secret")
    return 0


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


