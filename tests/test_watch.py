"""Watching a live export folder: real series written the way a scanner writes them.

A writer thread (rtserver.scanner.export_writer) puts real files into a folder at the acquisition
pace - some in pieces, one cut short and completed later, slices out of order, foreign
files in between - while the watcher sends volumes to a real server over ZeroMQ. What the
server records is compared with the same series read offline (whose reading the reader
tests compare with dcm2niix), so the ground truth is the scanner's own files.
"""

from __future__ import annotations

import csv
import logging
import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest

from rtserver import protocol
from rtserver.config import Config
from rtserver.errors import InputError
from rtserver.scanner.export_writer import ExportPlan, ExportWriter, groups_by_volume
from rtserver.scanner.readers import read_file
from rtserver.scanner.sources import open_source
from rtserver.scanner.watch import FolderWatcher, watch_and_send
from rtserver.service.replay import ServerThread
from rtserver.service.server import Server

from .conftest import SHARED_DATA, SIEMENS_MOSAIC, SIEMENS_NIFTI, TRUNCATED_DICOM

ANY_PORT = "tcp://127.0.0.1:*"
GE_SLICES = SHARED_DATA / "dicom" / "ge_mr750_deliberate_motion_10vol"
PREFIX = "sub-01_task-regulation_run-1"


# --------------------------------------------------------------------------- live folder
def run_watched(tmp_path, plan: ExportPlan, n_volumes: int, **options):
    """Write ``plan`` into a folder while watch_and_send feeds a real server."""
    config = Config().with_overrides(network={"volumes": ANY_PORT, "feedback": ANY_PORT,
                                              "results": ANY_PORT})
    server = Server(config, tmp_path / "out")
    thread = ServerThread(server).start()
    from rtserver.service.bridge import ScannerBridge

    writer = ExportWriter(plan, tmp_path / "export").start()
    try:
        with ScannerBridge(server.endpoints["volumes"]) as bridge:
            report = watch_and_send(tmp_path / "export", bridge.send_volume,
                                    n_volumes=n_volumes, idle_timeout=30.0, **options)
            bridge.send_end(report.n_sent + len(report.missing))
        counters = thread.join(timeout=30)
    finally:
        writer.stop()
        server.stop()
    writer.join(timeout=30)
    return report, counters, tmp_path / "out"


def recorded(out):
    bold = nib.load(out / f"{PREFIX}_bold.nii.gz")
    with (out / f"{PREFIX}_desc-feedback_timeseries.tsv").open(newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return np.asarray(bold.dataobj), bold.affine, rows


def mosaic_plan(**changes) -> ExportPlan:
    files = sorted(p for p in SIEMENS_MOSAIC.glob("*.dcm") if not p.name.endswith("000000.dcm"))
    return ExportPlan(groups=[[p] for p in files], interval=0.08, **changes)


@pytest.mark.parametrize("poll", [None, 0.05], ids=["inotify", "polling"])
def test_watched_mosaic_series_arrives_whole_once_and_in_order(tmp_path, poll, caplog):
    """Volume 5 is first written as the real truncated file and completed two volumes
    later; volumes 2 and 7 are written in pieces; foreign files appear in between.
    """
    notes = tmp_path / "notes.txt"
    notes.write_text("scanner log\n")
    plan = mosaic_plan(in_pieces={2, 7}, late={4: 2}, cut=TRUNCATED_DICOM.stat().st_size,
                       foreign={3: notes})
    with caplog.at_level(logging.INFO):
        report, counters, out = run_watched(tmp_path, plan, n_volumes=10, poll=poll)
    data, affine, rows = recorded(out)
    expected = [v for v in open_source(SIEMENS_MOSAIC)]
    assert report.n_sent == counters.n_processed == 10
    assert report.missing == [] and counters.n_duplicates == 0
    assert [int(r["volume"]) for r in rows] == list(range(10))
    for volume in expected:
        assert np.array_equal(data[..., volume.index], volume.data)
    np.testing.assert_allclose(affine, expected[0].affine, atol=1e-4)
    assert "skipped notes.txt" in caplog.text
    complete = [float(r["t_file_complete"]) for r in rows]
    received = [float(r["t_received"]) for r in rows]
    assert all(c <= r for c, r in zip(complete, received, strict=True))
    reference = nib.as_closest_canonical(nib.load(SIEMENS_NIFTI))  # dcm2niix's reading
    ours = nib.as_closest_canonical(nib.Nifti1Image(data, affine))
    assert np.array_equal(np.asarray(ours.dataobj), np.asarray(reference.dataobj))


def test_a_volume_that_never_comes_is_reported_missing(tmp_path, caplog):
    plan = mosaic_plan(skip={6})
    with caplog.at_level(logging.WARNING):
        report, counters, out = run_watched(tmp_path, plan, n_volumes=10, missing_after=0.3)
    data, _, rows = recorded(out)
    assert report.missing == [6]
    assert counters.missing == [[6, 6]] and counters.n_missing == 1  # [first, last] ranges
    # Row N is volume N: the missing volume keeps its row (values empty, missing set) and
    # its place in the BOLD file (zeros).
    assert [int(r["volume"]) for r in rows] == list(range(10))
    assert [r["missing"] for r in rows] == ["0"] * 6 + ["1"] + ["0"] * 3
    assert rows[6]["value"] == rows[6]["latency_ms"] == ""
    assert data.shape[3] == 10 and not data[..., 6].any() and data[..., 7].any()
    assert "volume 6 (scanner number 7) is missing" in caplog.text


def foreign_dicoms(tmp_path, source):
    """A localizer and an image of another series, made from a real file."""
    localizer = pydicom.dcmread(source)
    localizer.ImageType = ["ORIGINAL", "PRIMARY", "M", "LOCALIZER"]
    localizer.SeriesInstanceUID = pydicom.uid.generate_uid()
    localizer.SeriesNumber = 1
    other = pydicom.dcmread(source)
    other.SeriesInstanceUID = pydicom.uid.generate_uid()
    other.SeriesNumber = 99
    paths = tmp_path / "localizer_0001.dcm", tmp_path / "other_series_0001.dcm"
    localizer.save_as(paths[0])
    other.save_as(paths[1])
    return paths


def ge_plan(tmp_path, **changes) -> ExportPlan:
    if not GE_SLICES.exists():
        pytest.skip(f"{GE_SLICES} is absent: the per-slice series live in ../shared/data")
    files = sorted(p for p in GE_SLICES.iterdir() if p.suffix == ".dcm")
    keys = {p: read_file(p)[0].volume_key for p in files}
    return ExportPlan(groups=groups_by_volume(files, keys), interval=0.15, **changes)


def test_watched_per_slice_series_with_slices_out_of_order(tmp_path, caplog):
    """GE MR750, 10 volumes of 15 slice files: slices shuffled within each volume, volume 3
    in pieces, volume 1's first file cut short and completed after volume 3, a localizer and
    another series' image dropped in.
    """
    plan = ge_plan(tmp_path, shuffle_slices=True, in_pieces={3}, late={1: 2}, seed=4)
    localizer, other = foreign_dicoms(tmp_path, plan.groups[0][0])
    plan.foreign = {2: localizer, 5: other}
    with caplog.at_level(logging.INFO):
        report, counters, out = run_watched(tmp_path, plan, n_volumes=10)
    data, affine, rows = recorded(out)
    expected = list(open_source(GE_SLICES))
    assert report.n_sent == counters.n_processed == len(expected) == 10
    assert [int(r["volume"]) for r in rows] == list(range(10))
    for volume in expected:
        assert np.array_equal(data[..., volume.index], volume.data)
    np.testing.assert_allclose(affine, expected[0].affine, atol=1e-4)
    assert "skipped localizer_0001.dcm" in caplog.text
    assert "skipped other_series_0001.dcm" in caplog.text


def test_patient_identity_never_leaves_the_bridge(tmp_path):
    """A series whose DICOM carries a patient's name, ID and birth date (also in the file
    names): none of it is in what the bridge sends or in anything the server writes.
    """
    name, patient_id, birth = "Doe^Jane", "PID7788123", "19711231"
    source = tmp_path / "named"
    source.mkdir()
    for path in sorted(SIEMENS_MOSAIC.glob("*.dcm"))[1:6]:
        dataset = pydicom.dcmread(path)
        dataset.PatientName, dataset.PatientID, dataset.PatientBirthDate = name, patient_id, birth
        dataset.save_as(source / f"DOE_JANE_{patient_id}_{path.name}")
    plan = ExportPlan(groups=[[p] for p in sorted(source.iterdir())], interval=0.05)
    sent: list[bytes] = []

    def capture(volume):
        sent.append(bytes(protocol.encode_volume(volume)[0]))

    writer = ExportWriter(plan, tmp_path / "export").start()
    report = watch_and_send(tmp_path / "export", capture, n_volumes=5, idle_timeout=20.0)
    writer.join(timeout=30)
    assert report.n_sent == len(sent) == 5
    # And through a real server, which writes everything it was sent.
    report, _, out = run_watched(tmp_path / "second", plan, n_volumes=5)
    assert report.n_sent == 5
    texts = [header.decode() for header in sent]
    for path in out.iterdir():
        content = path.read_bytes()
        if path.suffix == ".gz":
            import gzip

            content = gzip.decompress(content)
        texts.append(content.decode("latin-1"))
    for needle in (name, "Doe", "DOE_JANE", patient_id, birth, "1971"):
        for text in texts:
            assert needle not in text


def test_foreign_files_alone_send_nothing(tmp_path, caplog):
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "notes.txt").write_text("not an image")
    shutil.copy(TRUNCATED_DICOM, folder / "cut.dcm")  # never completed
    sent = []
    with caplog.at_level(logging.INFO):
        report = watch_and_send(folder, sent.append, idle_timeout=0.5, n_volumes=None,
                                stop=_stop_after(1.0))
    assert sent == [] and report.n_sent == 0
    assert "skipped notes.txt" in caplog.text
    assert "1 files never became complete" in caplog.text


def _stop_after(seconds: float):
    import threading

    event = threading.Event()
    threading.Timer(seconds, event.set).start()
    return event


# --------------------------------------------------------------------------- real processes
LISTENING = r"listening: volumes (\S+), feedback (\S+), results (\S+)"


def start_server(processes, out):
    from .conftest import command

    server = processes([command("rtserver"), "serve", "--out", str(out), "--volumes", ANY_PORT,
                        "--feedback", ANY_PORT, "--results", ANY_PORT])
    volumes, _, _ = server.wait_for(LISTENING).groups()
    return server, volumes


def test_send_watch_command_follows_a_live_folder(tmp_path, processes):
    """`rtserver serve` and `rtserver send --watch` as separate processes while a scanner
    writes the real series: every volume recorded, in order, and both exit 0.
    """
    from .conftest import command

    server, volumes = start_server(processes, tmp_path / "out")
    export = tmp_path / "export"
    export.mkdir()
    bridge = processes([command("rtserver"), "send", str(export), "--watch", "--to", volumes,
                        "--n-volumes", "10"])
    bridge.wait_for(r"watching .*\(file events\)")
    writer = ExportWriter(mosaic_plan(late={1: 1}, cut=TRUNCATED_DICOM.stat().st_size),
                          export).start()
    code, stderr = bridge.finish(timeout=60)
    writer.join(timeout=30)
    assert code == 0, stderr
    assert "sent 10 volumes from 10 files" in stderr and "Traceback" not in stderr
    code, stderr = server.finish(timeout=60)
    assert code == 0, stderr
    data, _, rows = recorded(tmp_path / "out")
    assert [int(r["volume"]) for r in rows] == list(range(10))
    for volume in open_source(SIEMENS_MOSAIC):
        assert np.array_equal(data[..., volume.index], volume.data)


def test_send_watch_ends_cleanly_on_sigint(tmp_path, processes):
    """Ctrl-C on the bridge: what was complete is sent, the server is told the run ended."""
    import signal

    from .conftest import command

    server, volumes = start_server(processes, tmp_path / "out")
    export = tmp_path / "export"
    export.mkdir()
    for path in sorted(SIEMENS_MOSAIC.glob("*.dcm"))[1:4]:
        shutil.copy(path, export)
    bridge = processes([command("rtserver"), "send", str(export), "--watch", "--to", volumes])
    bridge.wait_for(r"watching")
    feedback = tmp_path / "out" / f"{PREFIX}_desc-feedback_timeseries.tsv"
    assert wait_until(lambda: feedback.exists() and len(feedback.read_text().splitlines()) == 4)
    bridge.proc.send_signal(signal.SIGINT)
    code, stderr = bridge.finish(timeout=60)
    assert code == 0, stderr
    assert "sent 3 volumes" in stderr
    code, stderr = server.finish(timeout=60)
    assert code == 0, stderr
    _, _, rows = recorded(tmp_path / "out")
    assert [int(r["volume"]) for r in rows] == [0, 1, 2]


def wait_until(condition, timeout: float = 30.0) -> bool:
    """Poll ``condition`` every 50 ms until it holds (True) or ``timeout`` passes (False)."""
    import threading
    import time

    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            return False
        pause.wait(0.05)
    return True


def test_watched_parrec_dumps_wait_for_their_rec(tmp_path):
    """Philips PAR/REC dumps: each PAR is written before its REC, and the REC in pieces; the
    PAR is read once its REC is whole.
    """
    folder = SHARED_DATA / "dicom" / "pyneal_3vendor_3vol" / "Philips_env" / "funcData" / "0001"
    if not folder.exists():
        pytest.skip(f"{folder} is absent: the PAR/REC dumps live in ../shared/data")
    pars = sorted(folder.glob("*.par"))
    plan = ExportPlan(groups=[[par, par.with_suffix(".rec")] for par in pars], interval=0.1,
                      in_pieces=set(range(len(pars))))
    report, counters, out = run_watched(tmp_path, plan, n_volumes=len(pars), tr=1.0)
    data, _, rows = recorded(out)
    assert report.n_sent == counters.n_processed == len(pars) == 4
    for volume in open_source(folder, tr=1.0):  # the dumps state no usable TR
        assert np.array_equal(data[..., volume.index], volume.data)


def test_watching_a_file_names_the_watch_setting(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a folder")
    with pytest.raises(InputError, match="should be a folder") as raised:
        FolderWatcher(path)
    assert raised.value.setting == "watch"
