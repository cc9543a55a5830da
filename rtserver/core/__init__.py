"""The processing core: one volume in, one feedback event out, and no I/O.

:mod:`~rtserver.core.pipeline` (``Pipeline.step``) runs the stages of
:mod:`~rtserver.core.stages` (motion, ROI, signal model, feedback) and the decoder of
:mod:`~rtserver.core.decoder`; :mod:`~rtserver.core.registration` holds the pure side of
registering the MNI atlases (:mod:`~rtserver.core.atlas`) to a run (masks, Dice, QC; ANTs
runs in the service layer); :mod:`~rtserver.core.hrf` holds the canonical HRF.

May import: the shared definitions (:mod:`rtserver.errors`, ``protocol``, ``paradigm``,
``volume``, ``rigid``, ``config``, ``bids``), numpy, scipy and scikit-learn. Never: files
(nibabel, pydicom, skops, ANTs, matplotlib), sockets, the scanner, service, simulator or
training layers.
The import-linter contracts in ``pyproject.toml`` check this.
"""
