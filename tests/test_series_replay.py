"""Every real series, sent by the bridge and recorded by the server, equals dcm2niix's reading.

tests/test_readers*.py check the readers file by file; this goes through the whole path a
session takes: the export folder is opened as a source (the series assembler picks the run
and orders its volumes), the bridge sends each volume over ZeroMQ, the server processes and
records it, and the recorded ``_bold.nii.gz`` is compared with the dcm2niix conversion of
the same folder: same number of volumes, same voxel values after the same scaling, same
orientation (canonical, affines within 1e-3 mm).
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from rtserver.config import Config
from rtserver.scanner.sources import open_source
from rtserver.service.replay import replay
from rtserver.service.server import Server

from .reader_helpers import (
    LOCAL_SERIES,
    SHARED_SERIES,
    assert_volumes_match,
    convert_with_dcm2niix,
    needs_dcm2niix,
)

ANY_PORT = "tcp://127.0.0.1:*"
SERIES = {**LOCAL_SERIES, **SHARED_SERIES}


@pytest.mark.parametrize("name", list(SERIES))
def test_recorded_series_equals_dcm2niix(name, tmp_path):
    series = SERIES[name]
    if not series.folder.is_dir():
        pytest.skip(f"{series.folder} is absent: the larger series live in ../shared/data")
    reference = series.reference
    if reference is None:
        needs_dcm2niix(name)
        reference = convert_with_dcm2niix(series.folder, tmp_path / "dcm2niix")
    config = Config().with_overrides(network={"volumes": ANY_PORT, "feedback": ANY_PORT,
                                              "results": ANY_PORT})
    source = open_source(series.folder)
    assert source.kind == series.kind
    report, counters = replay(source, Server(config, tmp_path / "out"), interval=None)
    assert counters.n_processed == report.n_acknowledged == series.n_volumes
    assert counters.n_rejected == counters.n_malformed == 0
    bold = nib.load(next((tmp_path / "out").glob("*_bold.nii.gz")))
    data = np.asanyarray(bold.dataobj)
    volumes = [(index, data[..., index], bold.affine) for index in range(data.shape[3])]
    assert_volumes_match(volumes, reference)
    assert bold.header.get_zooms()[3] == pytest.approx(series.tr, rel=1e-4)
