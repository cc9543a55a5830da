"""The ground-truth simulator: synthetic BIDS datasets with known motion and responses.

:func:`simulate_subject` writes one subject's runs of a paradigm as a raw BIDS dataset, and
the truth behind them under ``derivatives/simulator/``; :func:`simulate_cohort` writes
patients and controls into one dataset. The modules, in the order a run is built:

1. :mod:`~rtserver.sim.phantom`: the anatomy. The MNI152 T1 template, remapped to an
   EPI-like (T2*-weighted) contrast and resampled onto an EPI grid centred on the brain, and
   the cortico-striatal ROIs of the Schaefer-200 + Tian S2 atlas on the same grid.
2. :mod:`~rtserver.sim.activation`: the planted responses. Per ROI and condition, an
   amplitude drawn around the group's mean, spread over the ROI's voxels by smooth patterns
   (:mod:`~rtserver.sim.fields`); block boxcars convolved with the canonical HRF scale the
   baseline (:mod:`~rtserver.sim.render`).
3. :mod:`~rtserver.sim.motion`: a rigid trajectory (slow drift plus one or two spikes);
   volume ``k`` is the reference moved so that ``V_k(M_k @ x) = reference(x)``
   (:mod:`rtserver.rigid`'s convention). Volume 0 does not move.
4. :mod:`~rtserver.sim.physiology`: each run's heartbeat and breathing, written as BIDS
   ``_physio.tsv.gz`` recordings; their phases at each slice's time drive RETROICOR-like
   fluctuations.
5. :mod:`~rtserver.sim.noise`: scanner drift, AR(1) physiological noise, the cardiac and
   respiratory fluctuations and Rician thermal noise, at a set temporal SNR. Values are
   stored as int16, like a scanner's.
6. :mod:`~rtserver.sim.bids_writer` and :mod:`~rtserver.sim.truth`: the dataset's files and
   the truth JSON; :mod:`~rtserver.sim.subject` runs it all (:mod:`~rtserver.sim.checks`
   checks the arguments).

Every file is a deterministic function of ``(subject, seed)`` and the arguments: the same
call writes the same bytes (gzip streams carry no timestamp).

Imports: this package may import :mod:`rtserver.core` (the HRF, the atlas definitions) and
the shared definitions at the top of :mod:`rtserver` (``bids``, ``errors``, ``paradigm``,
``resources``, ``rigid``), never :mod:`rtserver.service`, :mod:`rtserver.scanner` or
:mod:`rtserver.train`. Nothing of the live system imports it: only the training of the demo
model, the demo, the command line, the tests and the benchmarks do.
"""

from rtserver.sim.subject import simulate_cohort, simulate_subject

__all__ = ["simulate_cohort", "simulate_subject"]
