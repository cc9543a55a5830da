"""The simulator's datasets pass the field's own validator (npm's bids-validator 1.15).

``make test`` installs the validator into ``tools/node_modules`` (``make tools``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from rtserver.sim import simulate_subject

VALIDATOR = Path(__file__).resolve().parent.parent / "tools" / "node_modules" / ".bin" / \
    "bids-validator"


pytestmark = pytest.mark.skipif(not VALIDATOR.exists(),
                                reason="bids-validator is not installed; `make tools` "
                                       "(part of `make test`) installs it")


def validate(root: Path) -> dict:
    """The validator's JSON report on ``root``."""
    result = subprocess.run([str(VALIDATOR), "--json", str(root)], capture_output=True,
                            text=True, timeout=120, check=False)
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"bids-validator printed no JSON (exit {result.returncode}): "
                    f"{result.stderr[-2000:]}")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, tiny_paradigm) -> Path:
    """Two subjects, one of each group, two runs each, on a small grid."""
    root = tmp_path_factory.mktemp("bids")
    for subject, group, seed in (("P01", "patient", 1), ("C01", "control", 2)):
        simulate_subject(root, subject, group, seed, paradigm=tiny_paradigm,
                         shape=(40, 48, 30), n_runs=2)
    return root


def test_simulated_dataset_passes_bids_validator(dataset):
    report = validate(dataset)
    assert report["issues"]["errors"] == []
    # The one warning left asks for more than one author; the simulator is the only one.
    assert [warning["key"] for warning in report["issues"]["warnings"]] == ["TOO_FEW_AUTHORS"]
    summary = report["summary"]
    assert sorted(summary["subjects"]) == ["C01", "P01"]
    assert summary["tasks"] == ["tiny"]


def test_validator_catches_a_broken_dataset(dataset, tmp_path):
    """The check can fail: without dataset_description.json the dataset is refused."""
    broken = tmp_path / "broken"
    shutil.copytree(dataset, broken)
    (broken / "dataset_description.json").unlink()
    report = validate(broken)
    assert "DATASET_DESCRIPTION_JSON_MISSING" in [e["key"] for e in report["issues"]["errors"]]
