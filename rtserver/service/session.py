"""Session setup: a validated :class:`~rtserver.config.Config` turned into what a run needs.

All file loading of a run happens here, before its first volume: the decoder (a skops
file), ROI masks drawn by the site, the paradigm, a motion reference from an earlier run,
and the MNI template and atlas. :meth:`Session.pipeline` then builds the processing core
and fits it at once whenever the reference is known (a decoder's training reference or a
configured one), so volume 0 pays no setup cost; only without either does the run's first
volume become the reference.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from rtserver.config import ATLAS, Config
from rtserver.core.atlas import Atlas, Template
from rtserver.core.decoder import Decoder
from rtserver.core.pipeline import Pipeline
from rtserver.core.registration import AtlasRegistrar
from rtserver.core.stages.roi import RoiSet
from rtserver.errors import ConfigError, InputError
from rtserver.paradigm import Paradigm
from rtserver.resources import load_atlas, load_template
from rtserver.scanner.sources import open_source
from rtserver.service.atlas_registration import make_registrar
from rtserver.service.head_check import check_same_head
from rtserver.service.model_file import load_decoder
from rtserver.service.t1w_registration import read_t1w
from rtserver.volume import Volume

log = logging.getLogger(__name__)


def load_reference(path: str | Path, index: int = 0) -> Volume:
    """Volume ``index`` of a NIfTI file, a scanner export folder or a recorded run.

    Raises
    ------
    InputError
        If the source cannot be read or has no volume ``index``.
    """
    try:
        source = open_source(path, tr=1.0)
    except InputError as exc:
        raise InputError(f"Motion reference: {exc}") from None
    if not 0 <= index < source.n_volumes:
        raise InputError(f"Motion reference {path} has {source.n_volumes} volumes; volume "
                         f"{index} was asked for.")
    for volume in source:
        if volume.index == index:
            return volume
    raise InputError(f"Motion reference {path}: volume {index} could not be read.")


def read_rois(path: str | Path) -> RoiSet:
    """ROIs from a label image and the ``.tsv`` beside it (columns ``index`` and ``name``).

    Labels without a row in the table are named ``roi<value>``.

    Raises
    ------
    InputError
        If the image cannot be read, is not 3D, has no labelled voxel, or the table lacks
        its columns.
    """
    path = Path(path)
    try:
        img = nib.load(path)
        labels = np.asarray(img.dataobj).astype(np.int32)
    except Exception as exc:
        raise InputError(f"Cannot read ROI label image {path}: {exc}") from None
    if labels.ndim != 3:
        raise InputError(f"ROI label image {path} should be 3D. Got shape {labels.shape}.")
    table = Path(str(path).replace(".nii.gz", ".tsv").replace(".nii", ".tsv"))
    names: dict[int, str] = {}
    if table.exists():
        with table.open(newline="") as handle:
            for row in csv.DictReader(handle, delimiter="\t"):
                try:
                    names[int(row["index"])] = row["name"].strip()
                except (KeyError, ValueError, AttributeError):
                    raise InputError(
                        f"{table} should have columns 'index' and 'name'. Got row {row}."
                    ) from None
    present = sorted(int(v) for v in np.unique(labels) if v != 0)
    if not present:
        raise InputError(f"ROI label image {path} has no labelled voxel.")
    names = {value: names.get(value, f"roi{value}") for value in present}
    return RoiSet(labels=labels, affine=img.affine, names=names)


@dataclass(frozen=True)
class Session:
    """What one run needs, loaded once from the files a :class:`Config` names.

    Attributes
    ----------
    config : Config
        The validated configuration.
    decoder : Decoder or None
        The trained decoder (``[decoder] model``).
    rois : RoiSet or None
        ROI masks in EPI space (``[roi] mask``); ``None`` with a decoder (it brings its
        own), with atlas ROIs, or for an automatic whole-brain mask.
    paradigm : Paradigm or None
        The run's paradigm (``[feedback] paradigm``).
    reference : Volume or None
        The motion reference (``[motion] reference``, else the decoder's); ``None``: the
        run's first volume.
    template, atlas : Template, Atlas or None
        The MNI template and atlas, when the ROIs are the atlas's (``[roi] mask = "atlas"``).
    t1w : Volume or None
        The session's T1-weighted image (``[roi] t1w``), through which they are registered.
    """

    config: Config
    decoder: Decoder | None = None
    rois: RoiSet | None = None
    paradigm: Paradigm | None = None
    reference: Volume | None = None
    template: Template | None = None
    atlas: Atlas | None = None
    t1w: Volume | None = None

    @classmethod
    def from_config(cls, config: Config, paradigm: Paradigm | None = None) -> Session:
        """Load every file ``config`` names.

        Parameters
        ----------
        config : Config
            The run's configuration.
        paradigm : Paradigm or None
            A paradigm already loaded; ``None`` reads ``[feedback] paradigm`` if set.

        Raises
        ------
        InputError
            If a file cannot be read as what it should be, or the motion reference is not
            the head the decoder was trained on.
        ConfigError
            If the settings contradict each other (a decoder and ROI masks).
        """
        decoder = load_decoder(config.decoder.model) if config.decoder.model else None
        mask = config.roi.mask
        if decoder is not None and mask:
            raise ConfigError("A decoder brings the ROIs it was trained on; leave out the ROI "
                              f"mask (got {mask!r}).")
        rois = read_rois(mask) if mask and mask != ATLAS else None
        template = atlas = None
        if mask == ATLAS:
            template, atlas = load_template(), load_atlas()
        t1w = None
        if config.roi.t1w:
            if mask != ATLAS:
                raise ConfigError("A T1-weighted image serves the atlas ROIs; set the ROI "
                                  f"mask to {ATLAS!r} (got {mask!r}).", setting="roi.mask")
            t1w = read_t1w(config.roi.t1w)
        if paradigm is None and config.feedback.paradigm:
            paradigm = Paradigm.from_file(config.feedback.paradigm)
        reference = None
        if config.motion.reference:
            reference = load_reference(config.motion.reference, config.motion.reference_index)
            if decoder is not None:
                check_same_head(reference, decoder.reference,
                                run_name=Path(config.motion.reference).name,
                                decoder_name=Path(config.decoder.model).name)
                log.warning("the motion reference %s replaces the decoder's training "
                            "reference: its ROI voxels are only right if both are the same "
                            "head position", config.motion.reference)
        return cls(config=config, decoder=decoder, rois=rois, paradigm=paradigm,
                   reference=reference, template=template, atlas=atlas, t1w=t1w)

    def pipeline(self, events: list[dict] | None = None, keep_features: bool = False,
                 out_dir: str | Path | None = None) -> Pipeline:
        """The run's processing core, fitted now if its reference is known.

        With atlas ROIs, the atlas is registered to the reference here (ANTs, before the
        run's first volume is accepted, when the reference is known), with its progress and
        time logged; ``out_dir`` (the run folder) receives the ROIs in EPI space, the ANTs
        transforms and the QC picture
        (:func:`rtserver.service.atlas_registration.write_outputs`).

        Raises
        ------
        InputError
            If fitting on the known reference fails (atlas registration refused, ROIs not
            on the grid).
        """
        pipeline = Pipeline(self.config, rois=self.rois, paradigm=self.paradigm,
                            reference=self.reference, decoder=self.decoder, events=events,
                            keep_features=keep_features, registrar=self.registrar(out_dir))
        if pipeline.reference is not None:
            pipeline.fit(pipeline.reference)
        return pipeline

    def check_run(self, volume: Volume, run_name: str = "volume 0") -> None:
        """Refuse a run that is not the head the decoder was trained on (no-op without one).

        The run's first volume is registered to the decoder's training reference
        (:func:`rtserver.service.head_check.check_same_head`).

        Raises
        ------
        InputError
            Naming the run and the decoder, if the heads differ.
        """
        if self.decoder is not None:
            check_same_head(volume, self.decoder.reference, run_name=run_name,
                            decoder_name=Path(self.config.decoder.model or "decoder").name)

    def registrar(self, out_dir: str | Path | None = None) -> AtlasRegistrar | None:
        """The atlas registration the pipeline calls at fit (``None`` without atlas ROIs)."""
        if self.template is None or self.atlas is None:
            return None
        return make_registrar(self.template, self.atlas, min_dice=self.config.roi.min_dice,
                              out_dir=out_dir, prefix=self.config.run.prefix, t1w=self.t1w)
