"""Real-time fMRI neurofeedback server for drug-versus-food cue reactivity.

The package is layered the way data flows through it:

- :mod:`rtserver.protocol` -- the versioned wire protocol (JSON header + raw buffer).
- :mod:`rtserver.volume` -- a volume is voxel data plus geometry.
- :mod:`rtserver.sources` -- read scanner exports (NIfTI, Siemens mosaic DICOM) as volumes.
- :mod:`rtserver.stages` -- processing stages (motion, ROI, feedback), estimator style.
- :mod:`rtserver.pipeline` -- ``Pipeline.step(volume) -> FeedbackEvent``.
- :mod:`rtserver.bridge`, :mod:`rtserver.server` -- the I/O shells around the core.
"""

__version__ = "0.1.0"
