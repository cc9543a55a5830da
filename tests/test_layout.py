"""Size limits of the layout: short modules, and short functions where every volume passes.

The layout issue: "No module over about 500 lines, no function on the per-volume path over
about 60 lines." Modules are counted in lines of their file. A function is counted from its
``def`` line (decorators left out) to its last line, docstring and comments included, with
the functions and classes nested in it.

The per-volume path is :data:`PER_VOLUME_PATH`: the functions one volume goes through on
its way from the scanner's file to the participant's screen (docs/architecture.md, "One
volume, from the scanner's file to the participant's screen"), found by their qualified
names (``Class.method``, ``function.inner``) in their files. A name that is no longer there
fails the test: when a function on the path is renamed, moved or split, update the list.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The folders whose modules are held to :data:`MAX_MODULE_LINES`.
PACKAGES = ("rtserver", "feedback_display", "benchmarks")
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60

#: The functions on the path of one volume, by file (relative to the repository root).
PER_VOLUME_PATH: dict[str, tuple[str, ...]] = {
    # 1. The watcher hears the file and decides when it is complete; its loop reads it.
    "rtserver/scanner/watch.py": (
        "FolderWatcher.start.Handler.on_any_event", "FolderWatcher.ready", "FolderWatcher.retry",
        "FolderWatcher.finish", "_hidden", "_natural_key",
        "watch_and_send", "_Run.deliver", "_Run.done", "_take_file",
    ),
    # 2. The readers: read_file, the sniffer, and every per-format reader it calls.
    "rtserver/scanner/readers/dispatch.py": ("read_file",),
    "rtserver/scanner/readers/sniff.py": (
        "sniff", "nifti_version", "_nifti_or_none", "_nifti_header_size", "_looks_like_bare_dicom",
    ),
    "rtserver/scanner/readers/dicom.py": (
        "read_dicom", "_parse_dicom", "_ends_inside_last_element", "_dicom_pieces",
        "_check_mr_image", "_dicom_kind",
    ),
    "rtserver/scanner/readers/dicom_common.py": ("common", "pixels", "_decode_compressed", "slice_affine"),
    "rtserver/scanner/readers/dicom_values.py": (
        "broken_header_as_input_error", "_tag", "value_of", "text_of", "texts_of", "numbers_of",
        "number_of", "integer_of", "items_of", "private_tag", "private_integer", "rescale",
        "philips_scale",
    ),
    "rtserver/scanner/readers/mosaic.py": ("_dicomwrappers", "mosaic_piece"),
    "rtserver/scanner/readers/slices.py": ("slice_piece", "_slice_key", "_slice_volume_key"),
    "rtserver/scanner/readers/enhanced.py": (
        "enhanced_pieces", "_describe_frames", "_functional_group", "_enhanced_volume",
    ),
    "rtserver/scanner/readers/parrec.py": (
        "read_parrec", "_parse_par", "_whole_rec", "_rec_path", "_chosen_images", "_read_pair",
        "_kept_volumes", "_par_tr",
    ),
    "rtserver/scanner/readers/nifti.py": (
        "read_nifti", "_gunzipped", "_whole_image", "nifti_n_volumes", "nifti_volumes", "nifti_tr",
        "sidecar_tr", "_is_mask",
    ),
    "rtserver/scanner/readers/pieces.py": (
        "Piece.__post_init__", "series_pattern", "series_digest", "regular_spacing", "scaled",
    ),
    # 3. Pieces become a volume.
    "rtserver/scanner/assembly.py": (
        "assemble", "SeriesAssembler.add", "SeriesAssembler.pop_ready", "SeriesAssembler.flush",
        "SeriesAssembler._missing_after", "SeriesAssembler._is_whole", "SeriesAssembler._volume_tr",
        "SeriesAssembler._release", "SeriesAssembler._report_missing",
    ),
    "rtserver/volume.py": ("check_affine", "Volume.__post_init__"),
    # 4. The bridge sends it; 5. the server receives it; 7. feedback is published.
    "rtserver/service/bridge.py": (
        "ScannerBridge.send_volume", "ScannerBridge._send_until_answered", "ScannerBridge._await_reply",
    ),
    "rtserver/protocol.py": (
        "parse_header", "wire_meta", "encode_volume", "decode_volume", "header_volume_fields",
        "encode_reply", "decode_reply", "FeedbackEvent.to_dict", "FeedbackEvent.from_dict",
        "encode_feedback", "decode_feedback",
    ),
    "rtserver/service/server.py": (
        "Server._serve", "Server._poll_once", "Server._on_control", "Server._run_complete",
    ),
    "rtserver/service/intake.py": (
        "VolumeIntake.on_message", "VolumeIntake.on_recorded", "VolumeIntake._is_duplicate",
        "VolumeIntake._process", "VolumeIntake._after_publish", "VolumeIntake._count",
    ),
    "rtserver/service/run_output.py": ("RunOutput.record",),
    "rtserver/service/channels.py": ("Wakers.wake", "Wakers.recorded"),
    # 6. The core processes it.
    "rtserver/core/pipeline.py": ("Pipeline.step", "Pipeline._patterns", "Pipeline.motion_estimate"),
    "rtserver/core/stages/_base.py": ("check_is_fitted", "check_shape"),
    "rtserver/core/stages/motion.py": (
        "smoothing_sigma", "smooth", "_Level._sample", "_Level.smooth", "_Level.residual",
        "_Level.register", "MotionCorrector.partial_fit", "MotionCorrector._check_grid",
        "MotionCorrector._register", "MotionCorrector.reslice",
    ),
    "rtserver/rigid.py": ("rotation_matrix", "params_to_matrix", "matrix_to_params",
                          "framewise_displacement"),
    "rtserver/core/stages/roi.py": (
        "RoiExtractor.transform_voxels", "RoiExtractor._check_reference_grid", "RoiExtractor.means",
        "RoiExtractor.transform",
    ),
    "rtserver/core/stages/signal.py": (
        "design_row", "SignalModel.row", "SignalModel.partial_fit", "SignalModel._residual_sd",
        "_despike", "_clean",
    ),
    "rtserver/core/decoder.py": ("LinearReadout.predict", "Decoder.predict"),
    "rtserver/core/stages/feedback.py": (
        "FeedbackScaler.is_baseline", "FeedbackScaler.partial_fit", "DecoderFeedback.partial_fit",
        "DecoderFeedback.score",
    ),
    "rtserver/paradigm.py": ("Block.is_baseline", "Paradigm.block_at", "Paradigm.block_of_volume"),
    # 7. The recorder queues the volume and writes it on its own thread.
    "rtserver/service/recording.py": (
        "RunRecorder.put", "RunRecorder._run", "RunRecorder._guarded", "RunRecorder._write",
        "RunRecorder._row", "RunRecorder._write_missing", "_time", "_number",
    ),
    "rtserver/service/growing_nifti.py": (
        "GrowingNifti.append", "GrowingNifti.append_fill", "GrowingNifti._append_bytes",
        "GrowingNifti._rewrite_header", "GrowingNifti._header_member",
    ),
    # 8. The display: the subscriber's receive loop, the feedback state, every frame.
    "feedback_display/subscriber.py": (
        "FeedbackSubscriber._receive_until_stopped", "decode_message", "FeedbackSubscriber._log_malformed",
    ),
    "feedback_display/feedback_state.py": (
        "FeedbackState.admit", "FeedbackState.receive", "FeedbackState.take_new",
        "FeedbackState.check_stale", "FeedbackState.block_mean", "BarState.enter_block",
        "BarState.follow_unseen", "BarState.continuous",
    ),
    "feedback_display/display.py": (
        "FeedbackDisplay._run_paradigm", "FeedbackDisplay._check_keys", "FeedbackDisplay._drain",
        "FeedbackDisplay._accept", "FeedbackDisplay._update_block", "FeedbackDisplay._draw_run_frame",
        "FeedbackDisplay._present", "FeedbackDisplay._log_row", "FeedbackDisplay._save_screenshot",
    ),
    "feedback_display/schedule.py": (
        "FrameSchedule.advance", "FrameSchedule.realign", "FrameSchedule.last_frame",
        "FrameSchedule.block_at", "FrameSchedule.cue_slot", "CueCycle.update", "Timeline.update",
        "Timeline._enter", "Timeline._start_intermittent",
    ),
    "feedback_display/thermometer.py": (
        "ThermometerGeometry.fill_height", "ThermometerGeometry.fill_rect", "BarAnimator.set_target",
        "BarAnimator.step",
    ),
    "feedback_display/screens.py": (
        "ThermometerDisplay.draw", "Screens.draw_cross", "Screens.draw_picture", "Screens.draw_block",
        "Screens.draw_bar", "Screens.draw_result",
    ),
    "feedback_display/timing.py": ("FramePacer.wait", "FramePacer.next_flip", "FramePacer.flipped",
                                   "FrameLog.flipped"),
    "feedback_display/window.py": ("DisplayWindow.keys", "DisplayWindow.flip"),
    "feedback_display/outputs.py": ("EventsLog.add",),
}


def function_lengths(source: str) -> dict[str, int]:
    """Return the length in lines of every function of a module, by qualified name.

    Parameters
    ----------
    source : str
        The module's text.

    Returns
    -------
    dict of str to int
        ``"Class.method"``, ``"function"``, ``"function.inner"``, ... to the lines from the
        ``def`` line to the last line of the body (the longest, for a name defined twice).
    """
    lengths: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = prefix + child.name
                lengths[name] = max(lengths.get(name, 0), child.end_lineno - child.lineno + 1)
                visit(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")
            else:
                visit(child, prefix)  # functions defined under if/try/with keep their scope

    visit(ast.parse(source), "")
    return lengths


def check_functions(root: Path, path_functions: dict[str, tuple[str, ...]],
                    limit: int) -> tuple[list[str], list[str]]:
    """Measure the named functions; return those not found and those over ``limit`` lines.

    Parameters
    ----------
    root : Path
        The folder the file names are relative to.
    path_functions : dict of str to tuple of str
        Qualified function names, by file.
    limit : int
        The most lines a function may have.

    Returns
    -------
    missing : list of str
        ``"file: name"`` of each name not found (or whose file is not there).
    too_long : list of str
        ``"file: name, N lines"`` of each function longer than ``limit``, longest first.
    """
    missing, too_long = [], []
    for relative, names in path_functions.items():
        file = root / relative
        lengths = function_lengths(file.read_text(encoding="utf-8")) if file.is_file() else {}
        for name in names:
            if name not in lengths:
                missing.append(f"{relative}: {name}")
            elif lengths[name] > limit:
                too_long.append((lengths[name], f"{relative}: {name}, {lengths[name]} lines"))
    return missing, [text for _, text in sorted(too_long, key=lambda item: -item[0])]


def long_modules(root: Path, packages: tuple[str, ...], limit: int) -> list[str]:
    """Return ``"file: N lines"`` of every module under ``packages`` longer than ``limit`` lines."""
    found = []
    for package in packages:
        for file in sorted((root / package).rglob("*.py")):
            n_lines = len(file.read_text(encoding="utf-8").splitlines())
            if n_lines > limit:
                found.append(f"{file.relative_to(root)}: {n_lines} lines")
    return found


# --------------------------------------------------------------------------- the tree
def test_every_module_is_at_most_500_lines():
    offenders = long_modules(ROOT, PACKAGES, MAX_MODULE_LINES)
    assert not offenders, (f"{len(offenders)} modules are longer than {MAX_MODULE_LINES} lines; "
                           "split them:\n  " + "\n  ".join(offenders))


def test_every_named_per_volume_function_exists():
    missing, _ = check_functions(ROOT, PER_VOLUME_PATH, MAX_FUNCTION_LINES)
    assert not missing, ("These functions of PER_VOLUME_PATH are not where the list says (renamed, "
                         "moved or split?); update the list in tests/test_layout.py:\n  "
                         + "\n  ".join(missing))


def test_per_volume_functions_are_at_most_60_lines():
    _, too_long = check_functions(ROOT, PER_VOLUME_PATH, MAX_FUNCTION_LINES)
    assert not too_long, (f"{len(too_long)} functions on the per-volume path are longer than "
                          f"{MAX_FUNCTION_LINES} lines; split them:\n  " + "\n  ".join(too_long))


def test_the_packages_are_there():
    # An empty walk would pass the module test without checking anything.
    for package in PACKAGES:
        assert any((ROOT / package).rglob("*.py")), f"no modules found under {ROOT / package}"


# --------------------------------------------------------------------------- the checks themselves
def _function(name: str, n_lines: int, indent: str = "") -> str:
    """Source of a function of exactly ``n_lines`` lines."""
    body = [f"{indent}    x = {index}" for index in range(n_lines - 2)]
    return "\n".join([f"{indent}def {name}():", *body, f"{indent}    return x"]) + "\n"


def test_function_lengths_names_and_counts_nested_functions():
    source = ("import functools\n\n"
              + _function("top", 5)
              + "class Outer:\n"
              + "    @functools.cache\n" + _function("method", 3, "    ")
              + "    class Inner:\n" + _function("deep", 4, "        ")
              + "def outer():\n" + _function("inner", 2, "    ") + "    return inner\n"
              + "if True:\n" + _function("guarded", 6, "    "))
    lengths = function_lengths(source)
    assert lengths == {"top": 5, "Outer.method": 3, "Outer.Inner.deep": 4, "outer": 4,
                       "outer.inner": 2, "guarded": 6}


def test_check_functions_reports_long_and_missing_ones(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text(_function("short", 60) + _function("long", 61)
                                             + _function("longer", 75))
    missing, too_long = check_functions(
        tmp_path, {"pkg/mod.py": ("short", "long", "longer", "gone"), "pkg/absent.py": ("f",)}, 60)
    assert missing == ["pkg/mod.py: gone", "pkg/absent.py: f"]
    assert too_long == ["pkg/mod.py: longer, 75 lines", "pkg/mod.py: long, 61 lines"]


def test_long_modules_reports_each_with_its_length(tmp_path):
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "ok.py").write_text("x = 1\n" * 500)
    (tmp_path / "pkg" / "sub" / "big.py").write_text("x = 1\n" * 501)
    assert long_modules(tmp_path, ("pkg",), 500) == [f"{Path('pkg/sub/big.py')}: 501 lines"]
