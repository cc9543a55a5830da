"""The display's start: the trigger key, Escape mid-run, and no start within the timeout."""

from __future__ import annotations

import json

import pytest
import zmq

from rtserver import protocol

from .conftest import command
from .display_helpers import (
    bind_xpub,
    feedback_event,
    needs_display,
    press,
    read_tsv,
    wait_for_subscription,
)

pytestmark = [pytest.mark.display, needs_display]

FRAME = 1 / 60


def test_trigger_key_starts_the_run_and_escape_keeps_what_was_shown(tmp_path, processes):
    context = zmq.Context()
    xpub, address = bind_xpub(context)
    try:
        display = processes([command("feedback-display"), "--windowed", "--paradigm",
                             "regulation", "--server", address, "--out", str(tmp_path),
                             "--start-on", "trigger", "--trigger-key", "t", "--timeout", "30"])
        wait_for_subscription(xpub, 60.0, display.proc)
        display.wait_for(r"rating_before: the rating scale is shown")
        press("space")
        display.wait_for(r"rating_before: 50$")
        display.wait_for(r"waiting for the trigger")
        # A replay's first volume does not start a run that waits for the trigger.
        xpub.send_multipart(protocol.encode_feedback(feedback_event(0, 0.3)))
        display.wait_for(r"ignored feedback for volume 0: the run waits for the trigger")
        press("t")
        display.wait_for(r"run started by the trigger")
        press("Escape")
        code, stderr = display.finish(timeout=30.0)
    finally:
        xpub.close(linger=0)
        context.term()
    assert code == 0, stderr
    prefix = "sub-01_task-regulation_run-1"
    summary = json.loads((tmp_path / f"{prefix}_desc-display.json").read_text())
    assert summary["ended_by"] == "escape"
    assert summary["started_by"] == "trigger" and summary["n_triggers"] == 1
    assert summary["n_feedback_events_before_start"] == 1
    rows = read_tsv(tmp_path / f"{prefix}_events.tsv")
    assert [row["trial_type"] for row in rows] == ["rating_before", "fixation"]
    assert float(rows[0]["response"]) == 50.0 and float(rows[0]["onset"]) < 0
    assert 0 <= float(rows[1]["onset"]) <= 2 * FRAME + 0.005  # the first frame after it
    assert float(rows[1]["duration"]) > 0


def test_no_start_within_the_timeout_is_one_line_error(tmp_path):
    import subprocess

    context = zmq.Context()
    xpub, address = bind_xpub(context)  # bound, so the display connects, but silent
    try:
        result = subprocess.run(
            [command("feedback-display"), "--windowed", "--paradigm", "regulation",
             "--server", address, "--timeout", "1", "--quiet", "--skip-ratings",
             "--out", str(tmp_path)], capture_output=True, text=True, timeout=60)
    finally:
        xpub.close(linger=0)
        context.term()
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"feedback-display: error: no trigger key (5) and no feedback event from {address} "
        "within 1 s."]
    summary = json.loads((tmp_path / "sub-01_task-regulation_run-1_desc-display.json")
                         .read_text())
    assert summary["ended_by"] == "no_start"
    assert not (tmp_path / "sub-01_task-regulation_run-1_events.tsv").exists()
