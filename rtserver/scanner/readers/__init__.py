"""Read any one file a real-time export folder can hold, as pieces of fMRI volumes.

A scanner's export folder fills with one file per volume (Siemens classic mosaic, Siemens
XA enhanced, a PAR/REC pair, a 3D NIfTI), one file per slice (GE, Philips and other classic
DICOM), or one file per run (a 4D NIfTI). :func:`read_file` turns any one of them into
:class:`Piece` objects: a whole volume, or one slice of a volume, with its geometry in world
RAS+ millimetres and its voxel values as dcm2niix's NIfTI would hold them after scaling.
:func:`rtserver.scanner.assembly.assemble` stacks the slices of one volume.

pydicom reads DICOM files (every transfer syntax it reads, with its data dictionaries and
pixel decoders); nibabel reads Siemens CSA headers, PAR/REC files and NIfTI files. This
package adds what they do not do: which files and frames make which volume, dcm2niix's
scaling and geometry conventions, and telling a file the scanner is still writing
(:class:`rtserver.errors.IncompleteFileError`) from a foreign one
(:class:`rtserver.errors.ForeignFileError`). pydicom parses every item of every sequence of
undefined length when it reads a file, so :func:`read_file` takes about 16 ms for a Siemens
XA30 enhanced volume (33 frames, 2,700 elements; 12 ms of it in ``dcmread``), 2 ms for a
mosaic or a Philips slice and 1.2 ms for a GE slice on a 2-core machine
(``python benchmarks/readers.py``).

Modules, by format: :mod:`~rtserver.scanner.readers.sniff` (what a file is, from its first
bytes), :mod:`~rtserver.scanner.readers.dicom` (any DICOM file: parsing, checks, layout),
:mod:`~rtserver.scanner.readers.mosaic` (Siemens classic mosaic),
:mod:`~rtserver.scanner.readers.enhanced` (enhanced multi-frame: Siemens XA and others),
:mod:`~rtserver.scanner.readers.slices` (GE, Philips and other per-slice DICOM),
:mod:`~rtserver.scanner.readers.parrec` (Philips PAR/REC), :mod:`~rtserver.scanner.readers.nifti`
(NIfTI, also for replayed files); :mod:`~rtserver.scanner.readers.pieces` holds what they
make and share.

Patient identity never enters a piece: it carries the fields of :class:`Piece` only, and its
``series`` is a one-way digest of the SeriesInstanceUID (a UID is itself an attribute that
the DICOM basic de-identification profile replaces) or, for PAR/REC and NIfTI files, of the
folder and the file-name pattern.
"""

from rtserver.scanner.readers.dispatch import is_complete_file, read_file
from rtserver.scanner.readers.nifti import (
    iter_nifti_volumes,
    load_nifti,
    nifti_n_volumes,
    nifti_tr,
    nifti_volumes,
    sidecar_tr,
)
from rtserver.scanner.readers.pieces import FORMATS, KINDS, Piece

__all__ = [
    "FORMATS",
    "KINDS",
    "Piece",
    "is_complete_file",
    "iter_nifti_volumes",
    "load_nifti",
    "nifti_n_volumes",
    "nifti_tr",
    "nifti_volumes",
    "read_file",
    "sidecar_tr",
]
