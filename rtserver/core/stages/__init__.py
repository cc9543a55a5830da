"""Processing stages: estimators set up once with ``fit`` and updated one volume at a time.

Each stage stores its arguments in the constructor, learns its state in ``fit`` (attributes
ending in ``_``) and does O(1) work per volume in ``partial_fit`` / ``transform``. None of
them does I/O.
"""

from rtserver.core.stages.feedback import DecoderFeedback, FeedbackScaler
from rtserver.core.stages.motion import MotionCorrector, MotionEstimate
from rtserver.core.stages.roi import RoiExtractor, RoiSet
from rtserver.core.stages.signal import SignalModel

__all__ = ["DecoderFeedback", "FeedbackScaler", "MotionCorrector", "MotionEstimate",
           "RoiExtractor", "RoiSet", "SignalModel"]
