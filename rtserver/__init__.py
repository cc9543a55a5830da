"""Real-time fMRI neurofeedback server for drug-versus-food cue reactivity.

The package is layered the way data flows through it:

- :mod:`rtserver.protocol` -- the versioned wire protocol (JSON header + raw buffer).
- :mod:`rtserver.volume` -- a volume is voxel data plus geometry.
- :mod:`rtserver.scanner.sources` -- read scanner exports (NIfTI, Siemens mosaic DICOM) as volumes.
- :mod:`rtserver.core.stages` -- processing stages (motion, ROI, feedback), estimator style.
- :mod:`rtserver.core.pipeline` -- ``Pipeline.step(volume) -> FeedbackEvent``.
- :mod:`rtserver.service.bridge`, :mod:`rtserver.service.server` -- the I/O shells around the core.
"""

__version__ = "0.1.0"
