"""The planted responses: per-ROI amplitudes of each condition and their voxel patterns.

Each block's condition (``look_drug``, ``look_food``, ...) has, per ROI, an amplitude in
percent signal change drawn per subject around its group's mean
(:data:`GROUP_AMPLITUDES`, :data:`OTHER_ROI_AMPLITUDES`, sd :data:`SUBJECT_SD_PERCENT`,
plus the subject's own drug bias, :data:`SUBJECT_BIAS_SD_PERCENT`), spread over the ROI's
voxels by a smooth pattern of its own (:class:`Activation`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from rtserver.core.atlas import ROI_DEFINITIONS
from rtserver.sim.fields import field, plane_waves
from rtserver.sim.phantom import Phantom

#: The groups a subject can belong to (keys of :data:`GROUP_AMPLITUDES`).
GROUPS = ("patient", "control")

#: ROIs whose drug and food responses follow the group (the finding); the others respond
#: to every cue alike in both groups.
CUE_REACTIVE_ROIS = ("nacc", "ventral_caudate", "vmpfc_ofc", "ifg_dlpfc")

#: Group mean percent signal change per BIDS ``trial_type`` in the cue-reactive ROIs
#: (:data:`CUE_REACTIVE_ROIS`), per group. Patients respond more to drug cues than to food
#: cues and more while reappraising drug cues than while savoring food cues; controls the
#: other way round. Reappraising lowers the drug response, savoring raises the food
#: response. Trial types not listed (and fixation) have no response.
GROUP_AMPLITUDES = MappingProxyType({
    "patient": MappingProxyType({
        "look_drug": 1.6, "reappraise_drug": 1.3, "look_food": 0.8, "savor_food": 1.0,
        "look_neutral": 0.5,
    }),
    "control": MappingProxyType({
        "look_drug": 0.7, "reappraise_drug": 0.5, "look_food": 1.4, "savor_food": 1.9,
        "look_neutral": 0.5,
    }),
})
#: Group mean percent signal change in the other ROIs, the same in both groups.
OTHER_ROI_AMPLITUDES = MappingProxyType({
    "look_drug": 0.8, "reappraise_drug": 0.7, "look_food": 0.8, "savor_food": 0.9,
    "look_neutral": 0.5,
})
#: Subject-to-subject standard deviation of each ROI's amplitude (percent signal change).
SUBJECT_SD_PERCENT = 0.15
#: Subject-to-subject standard deviation of the subject's own drug bias (percent signal
#: change): a shift drawn once per subject, added half to the drug and taken half from the
#: food conditions in every cue-reactive ROI. With the group means it makes the drug-bias
#: index (drug minus food) differ between groups by about 2 standard deviations, and some
#: subjects respond against their group, as in real cohorts.
SUBJECT_BIAS_SD_PERCENT = 0.75
#: Amplitudes are clipped to this range after the subject's draw.
AMPLITUDE_RANGE_PERCENT = (0.2, 2.5)
#: Voxel pattern inside each ROI: voxel amplitude = ROI amplitude * (1 + sd * z(x)), with z
#: a smooth random field of mean 0 and sd 1 over the ROI's voxels: the weighted sum of a
#: field shared by all conditions, one of the cue category (drug, food or neutral pictures,
#: whatever the strategy: this is what multivoxel decoders trained on passive viewing find
#: again in regulation blocks) and one of the condition itself (the strategy's own part).
PATTERN_SD = 0.5
PATTERN_WEIGHTS = MappingProxyType({"shared": 1.0, "cue": 1.0, "condition": 0.5})
#: Wavelengths (mm) and number of the random plane waves that make a pattern field.
PATTERN_WAVELENGTH_MM = (7.0, 16.0)
PATTERN_WAVES = 24


@dataclass(frozen=True)
class Activation:
    """One subject's planted responses: per-ROI amplitudes and voxel patterns.

    Attributes
    ----------
    amplitudes : Mapping
        ROI name -> ``trial_type`` -> mean percent signal change over the ROI's voxels.
    waves : Mapping
        ROI name -> ``"shared"``, ``"cue_<category>"`` or ``trial_type`` ->
        ``(PATTERN_WAVES, 4)`` array of plane waves (frequency vector in cycles/mm, phase in
        radians) whose sum is a pattern field (:data:`PATTERN_WEIGHTS`). Fields are
        functions of world coordinates, so every grid sees the same one.
    bias : float
        The subject's own drug-bias shift (percent signal change; see
        :data:`SUBJECT_BIAS_SD_PERCENT`), already included in ``amplitudes``.
    """

    amplitudes: Mapping[str, Mapping[str, float]]
    waves: Mapping[str, Mapping[str, np.ndarray]]
    bias: float = 0.0

    @classmethod
    def draw(cls, group: str, rng: np.random.Generator) -> Activation:
        """Draw a subject of ``group``: group means plus subject variability, patterns.

        Parameters
        ----------
        group : {"patient", "control"}
            The subject's group (:data:`GROUP_AMPLITUDES`).
        rng : numpy.random.Generator
            Source of the random draws.

        Returns
        -------
        Activation
            The subject's amplitudes, patterns and drug bias.
        """
        trial_types = sorted(GROUP_AMPLITUDES[group])
        amplitudes: dict[str, Mapping[str, float]] = {}
        waves: dict[str, Mapping[str, np.ndarray]] = {}
        bias = SUBJECT_BIAS_SD_PERCENT * float(rng.standard_normal())
        cue_keys = sorted({_cue_key(t) for t in trial_types})
        for name, _ in ROI_DEFINITIONS.values():
            means = group_amplitudes(group, name)
            spread = SUBJECT_SD_PERCENT * rng.standard_normal(len(trial_types))
            if name in CUE_REACTIVE_ROIS:
                spread += [bias_sign(t) * bias / 2.0 for t in trial_types]
            draws = np.clip([means[t] for t in trial_types] + spread,
                            *AMPLITUDE_RANGE_PERCENT)
            amplitudes[name] = MappingProxyType(
                {t: float(a) for t, a in zip(trial_types, draws, strict=True)})
            waves[name] = MappingProxyType(
                {key: plane_waves(rng, PATTERN_WAVELENGTH_MM, PATTERN_WAVES)
                 for key in ("shared", *cue_keys, *trial_types)})
        return cls(MappingProxyType(amplitudes), MappingProxyType(waves), bias)

    def maps(self, phantom: Phantom, reference: Phantom | None = None) -> dict[str, np.ndarray]:
        """Return, per ``trial_type``, the percent signal change of every voxel of ``phantom``.

        Each ROI's pattern is normalised (mean 0, sd 1) over the ROI's voxels in
        ``reference`` (default ``phantom``), so that there the ROI's mean response is
        exactly its amplitude; a padded grid passes the unpadded phantom.

        Parameters
        ----------
        phantom : Phantom
            The grid the maps are made on.
        reference : Phantom, optional
            The grid the patterns are normalised on.

        Returns
        -------
        dict
            ``trial_type`` -> float64 image of ``phantom``'s shape, 0 outside the ROIs.
        """
        reference = phantom if reference is None else reference
        trial_types = sorted({t for table in self.amplitudes.values() for t in table})
        maps = {t: np.zeros(phantom.shape) for t in trial_types}
        for index, name in phantom.roi_names.items():
            inside = phantom.labels == index
            points = phantom.world_points(inside)
            reference_points = reference.world_points(reference.labels == index)
            for trial_type, amplitude in self.amplitudes[name].items():
                pattern = _pattern_field(self.waves[name], trial_type, points)
                reference_field = _pattern_field(self.waves[name], trial_type,
                                                 reference_points)
                z = (pattern - reference_field.mean()) / reference_field.std()
                maps[trial_type][inside] = amplitude * (1.0 + PATTERN_SD * z)
        return maps


def _pattern_field(waves: Mapping[str, np.ndarray], trial_type: str,
                   points: np.ndarray) -> np.ndarray:
    """Return a trial type's pattern field at ``points``: shared + cue category + own parts."""
    return (PATTERN_WEIGHTS["shared"] * field(waves["shared"], points)
            + PATTERN_WEIGHTS["cue"] * field(waves[_cue_key(trial_type)], points)
            + PATTERN_WEIGHTS["condition"] * field(waves[trial_type], points))


def _cue_key(trial_type: str) -> str:
    """Map ``look_drug`` to ``cue_drug``: the key of a trial type's cue-category pattern."""
    return "cue_" + trial_type.rpartition("_")[2]


def bias_sign(trial_type: str) -> int:
    """Return +1 for drug trial types, -1 for food ones, 0 otherwise.

    Parameters
    ----------
    trial_type : str
        A BIDS ``trial_type`` such as ``"look_drug"`` (its last ``_`` part is the cue).

    Returns
    -------
    int
        The sign the subject's drug bias takes in this trial type.
    """
    return {"drug": 1, "food": -1}.get(trial_type.rpartition("_")[2], 0)


def group_amplitudes(group: str, roi: str) -> Mapping[str, float]:
    """Return the group mean percent signal change per ``trial_type`` in ``roi``.

    Parameters
    ----------
    group : {"patient", "control"}
        The group.
    roi : str
        An ROI name of :data:`~rtserver.core.atlas.ROI_DEFINITIONS`.

    Returns
    -------
    Mapping
        ``trial_type`` -> percent signal change: the group's in the cue-reactive ROIs
        (:data:`CUE_REACTIVE_ROIS`), :data:`OTHER_ROI_AMPLITUDES` elsewhere.
    """
    return GROUP_AMPLITUDES[group] if roi in CUE_REACTIVE_ROIS else OTHER_ROI_AMPLITUDES
