"""A display killed mid-run and started again with the same command, with real processes.

``rtserver serve`` and ``rtserver send`` replay a simulated run paced at its (short) TR; the
display is SIGKILLed after it showed a volume's feedback, then started again with the same
command. Nothing it wrote is lost or rewritten, and the second attempt rejoins the run at
the block running then, with the values the server published.
"""

from __future__ import annotations

import hashlib
import json

import pytest

from rtserver.paradigm import Paradigm

from .conftest import command, wait_for_file
from .display_helpers import needs_display, read_tsv

pytestmark = [pytest.mark.display, needs_display]

FRAME = 1 / 60
RESTART = """
name = "restarttest"
task = "restarttest"
tr = 0.5

[ratings]
before = true
after = true
max_seconds = 1.5

[display]
cue_seconds = 1.0

[[blocks]]
condition = "fixation"
duration = 2.0
instruction = "Rest your eyes on the cross."

[[blocks]]
condition = "reappraise"
cue = "drug"
duration = 6.0
feedback = "continuous"
instruction = "REAPPRAISE: these drugs are not real, the people are actors. Bring the bar DOWN."

[[blocks]]
condition = "fixation"
duration = 2.0
instruction = "Rest your eyes on the cross."

[[blocks]]
condition = "savor"
cue = "food"
duration = 8.0
feedback = "continuous"
instruction = "SAVOR: imagine holding this food, tasting it, enjoying it. Bring the bar UP."

[[blocks]]
condition = "fixation"
duration = 2.0
instruction = "Rest your eyes on the cross."

[[blocks]]
condition = "reappraise"
cue = "drug"
duration = 8.0
feedback = "continuous"
instruction = "REAPPRAISE: these drugs are not real, the people are actors. Bring the bar DOWN."

[[blocks]]
condition = "fixation"
duration = 2.0
instruction = "Rest your eyes on the cross."
"""
LISTENING = r"listening: volumes (\S+), feedback (\S+), results (\S+)"
KILL_AFTER = 10  # SIGKILL once the display has shown this volume's feedback (5 s in)
PREFIX = "sub-01_task-restarttest_run-1"


def feedback_shown(events, volume: int) -> bool:
    """True once the events file has a feedback row of ``volume`` or a later one."""
    if not events.exists():
        return False
    return any(row.get("trial_type") == "feedback" and row.get("volume", "").isdigit()
               and int(row["volume"]) >= volume for row in read_tsv(events))


def block_at_frame(paradigm: Paradigm, frame: int) -> int:
    """1-based number of the block frame ``frame`` lies in (onsets in whole frames)."""
    starts = [round(block.onset / FRAME) for block in paradigm.blocks]
    return sum(1 for start in starts if start <= frame)


def test_a_display_killed_mid_run_restarts_without_losing_a_row_and_rejoins(tmp_path,
                                                                             processes):
    from rtserver.sim import simulate_subject

    paradigm_file = tmp_path / "restarttest.toml"
    paradigm_file.write_text(RESTART)
    paradigm = Paradigm.from_file(paradigm_file)
    run = simulate_subject(tmp_path / "bids", "01", "patient", 1, paradigm=paradigm,
                           shape=(24, 24, 20), voxel_size=8.0).runs[0]
    server_out, display_out = tmp_path / "server", tmp_path / "display"
    events = display_out / f"{PREFIX}_events.tsv"
    server = processes([
        command("rtserver"), "serve", "--out", str(server_out), "--volumes", "tcp://127.0.0.1:*",
        "--feedback", "tcp://127.0.0.1:*", "--results", "tcp://127.0.0.1:*",
        "--paradigm", str(paradigm_file), "--task", "restarttest", "--roi", str(run.rois),
        "--target", "nacc", "--wait-display", "60"])
    volumes, feedback, results = server.wait_for(LISTENING).groups()
    display_command = [
        command("feedback-display"), "--windowed", "--paradigm", str(paradigm_file),
        "--server", feedback, "--results", results, "--out", str(display_out),
        "--timeout", "60"]
    first = processes(display_command)
    server.wait_for(r"a feedback subscriber joined")
    bridge = processes([command("rtserver"), "send", str(run.bold), "--to", volumes,
                        "--timeout", "90"])

    wait_for_file(events, lambda path: feedback_shown(path, KILL_AFTER), timeout=60,
                  alive=lambda: first.proc.poll() is None)
    first.proc.kill()  # SIGKILL: no clean-up, no summary
    _, first_stderr = first.finish()
    before = events.read_bytes()
    assert "the server has processed 0 volumes" in first_stderr  # asked before the run

    second = processes(display_command)  # the same command
    second.wait_for(r"attempt 2 at this run \(rejoining it\)")
    rejoined = int(second.wait_for(r"rejoined the run at volume (\d+) \(attempt 2\)").group(1))
    for process, name in ((bridge, "bridge"), (server, "server"), (second, "display")):
        code, stderr = process.finish(timeout=120)
        assert code == 0, f"{name}: {stderr}"
        assert "Traceback" not in stderr

    # Nothing the killed display wrote was lost or rewritten.
    after = events.read_bytes()
    assert hashlib.sha256(after[:len(before)]).digest() == hashlib.sha256(before).digest()
    assert after.count(after.split(b"\n", 1)[0]) == 1  # the header once
    rows = read_tsv(events)
    killed = [row for row in rows if row["attempt"] == "1"]
    restarted = [row for row in rows if row["attempt"] == "2"]
    assert len(killed) + len(restarted) == len(rows)
    assert rows[:len(killed)] == killed and killed == read_tsv_bytes(before, tmp_path)
    assert "rating_before" in {row["trial_type"] for row in killed}
    assert not (display_out / f"{PREFIX}_desc-display.json").exists()  # killed: none
    summary = json.loads((display_out / f"{PREFIX}_desc-displayAttempt2.json").read_text())
    assert (summary["attempt"], summary["started_by"], summary["rejoined_at_volume"]) == (
        2, "rejoin", rejoined)
    assert summary["ended_by"] in ("run_end", "paradigm_end")
    assert rejoined > KILL_AFTER
    sidecar = json.loads((display_out / f"{PREFIX}_events.json").read_text())
    assert set(sidecar) == set(rows[0]) and "Description" in sidecar["attempt"]

    # The second attempt starts at the block running at the volume it rejoined at, with no
    # rating before; its rows are sorted, and every row's onset fits the paradigm.
    assert "rating_before" not in {row["trial_type"] for row in restarted}
    onsets = [float(row["onset"]) for row in restarted]
    assert onsets == sorted(onsets)
    assert onsets[0] > max(float(row["onset"]) for row in killed)  # after what was shown
    first_row = restarted[0]
    joined = paradigm.block_of_volume(rejoined)
    assert first_row["trial_type"] == joined.trial_type
    assert int(first_row["block"]) == paradigm.blocks.index(joined) + 1
    assert float(first_row["onset"]) == pytest.approx(rejoined * paradigm.tr, abs=0.5)
    slack = FRAME if summary["dropped_frames"] == 0 else summary["frame_interval_ms_max"] / 1000
    block_types = {block.trial_type for block in paradigm.blocks}
    later_blocks = [row for row in restarted[1:] if row["trial_type"] in block_types]
    assert [int(row["block"]) for row in later_blocks] == list(
        range(int(first_row["block"]) + 1, len(paradigm.blocks) + 1))
    for row in later_blocks:
        block = paradigm.blocks[int(row["block"]) - 1]
        assert int(row["frame"]) == round(block.onset / FRAME)
        assert abs(float(row["onset"]) - block.onset) <= slack + 0.002, row
    for row in restarted:
        if row["trial_type"] == "rating_after":
            assert float(row["onset"]) >= paradigm.duration - 1.0  # after the last volume
            continue
        assert block_at_frame(paradigm, int(row["frame"])) == int(row["block"]), row
        assert abs(float(row["onset"]) - int(row["frame"]) * FRAME) <= 0.5, row
    assert restarted[-1]["trial_type"] == "rating_after"  # the run ended normally

    # The values shown after the restart are the ones the server published for them.
    server_rows = {int(row["volume"]): row for row in read_tsv(
        server_out / f"{PREFIX}_desc-feedback_timeseries.tsv")}
    assert sorted(server_rows) == list(range(paradigm.n_volumes))  # the server lost none
    drawn = [row for row in restarted if row["trial_type"] == "feedback"]
    assert drawn and min(int(row["volume"]) for row in drawn) >= rejoined
    for row in drawn:
        published = server_rows[int(row["volume"])]
        assert float(row["value"]) == pytest.approx(float(published["value"]), abs=5e-5)
        assert row["censored"] == published["censored"]
    continuous = {v for v in range(rejoined + 1, paradigm.n_volumes)
                  if paradigm.block_of_volume(v).feedback == "continuous"}
    assert len(continuous - {int(row["volume"]) for row in drawn}) <= 2


def read_tsv_bytes(data: bytes, folder) -> list[dict[str, str]]:
    """The rows of an events file's bytes."""
    path = folder / "snapshot.tsv"
    path.write_bytes(data)
    return read_tsv(path)
