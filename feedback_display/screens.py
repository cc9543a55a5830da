"""What the participant sees, as PsychoPy stimuli built once before the run.

Every stimulus here is created (and drawn once off screen, see :meth:`Screens.prepare`)
before the run starts: textures of cue pictures and glyphs of every text exist before the
first block, so no frame of a block waits for the disk or a font.

Layout (``"pix"`` units, origin at the window's centre, for windows of 1024x768 or more):
the instruction across the top; the cue picture in the centre, or left of the thermometer
when the thermometer is shown; the thermometer right of centre with the target arrow beside
it; the rating scale across the centre.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.abc import Traversable
from typing import Any

from feedback_display.thermometer import BASELINE_VALUE, ThermometerGeometry
from rtserver.errors import InputError
from rtserver.paradigm import Block

# Colours (rgb255): calm, low-contrast greys with one soft blue for the feedback.
BACKGROUND = (46, 48, 52)
TUBE_BORDER = (150, 152, 158)
TUBE_INSIDE = (30, 31, 34)
FILL = (86, 164, 196)
CENSORED_FILL = (120, 120, 120)
#: The bar's colour while no feedback comes from the server (it rests at baseline).
NEUTRAL_FILL = (84, 88, 96)
#: The bar's colour for each kind of value (see :class:`feedback_display.feedback_state.BarFrame`).
FILLS = {"value": FILL, "censored": CENSORED_FILL, "unavailable": NEUTRAL_FILL}
MARKER = (215, 215, 215)
TARGET = (226, 196, 120)
TEXT = (222, 222, 222)
SOFT_TEXT = (190, 190, 190)
SCALE_LINE = (170, 172, 178)

WAITING_TEXT = "Waiting for the scanner..."
CENSORED_TEXT = "Hold still"
INTERMITTENT_TEXT = "Your result"
FONT = "DejaVu Sans"

#: x of the thermometer's centre.
THERMOMETER_X = 300
#: The box a cue picture is fitted into (aspect ratio kept), and where it goes.
PICTURE_BOX = (480, 360)
PICTURE_POS_ALONE = (0, 0)
PICTURE_POS_WITH_THERMOMETER = (-170, 0)
INSTRUCTION_Y = 323
#: The rating scale: a horizontal line from -SCALE_HALF_WIDTH to +SCALE_HALF_WIDTH at y=0.
SCALE_HALF_WIDTH = 350
MARKER_SIZE = (10, 50)
#: The target arrow: centre x, and distance of its centre from the tube's top or bottom.
ARROW_X = THERMOMETER_X + 125
ARROW_INSET = 40


def thermometer_geometry() -> ThermometerGeometry:
    """The thermometer's geometry in the display's layout."""
    return ThermometerGeometry(centre=(THERMOMETER_X, 0))


def scale_x(position: float) -> int:
    """The x (pixels) of a rating-scale position in [0, 100]."""
    return round(-SCALE_HALF_WIDTH + 2 * SCALE_HALF_WIDTH * min(100.0, max(0.0, position)) / 100)


def fitted_size(width: int, height: int, box: tuple[int, int] = PICTURE_BOX) -> tuple[int, int]:
    """The largest whole-pixel size of a ``width`` x ``height`` picture inside ``box``."""
    scale = min(box[0] / width, box[1] / height)
    return round(width * scale), round(height * scale)


def _rect(win: Any, width: float, height: float, pos: tuple[float, float],
          color: tuple[int, int, int]) -> Any:
    from psychopy import visual

    return visual.Rect(win, width=width, height=height, pos=pos, units="pix",
                       fillColor=color, lineColor=None, lineWidth=0, colorSpace="rgb255",
                       interpolate=False, autoLog=False)


def _text(win: Any, content: str, pos: tuple[float, float], size: int,
          color: tuple[int, int, int], wrap: int | None = None) -> Any:
    from psychopy import visual

    return visual.TextStim(win, text=content, pos=pos, height=size, units="pix",
                           wrapWidth=wrap or min(900, int(win.size[0]) - 80), color=color,
                           colorSpace="rgb255", font=FONT, autoLog=False)


class ThermometerDisplay:
    """The thermometer's PsychoPy stimuli.

    An outlined tube, a fill, baseline ticks, and the target arrow.
    Every part is a filled rectangle with whole-pixel edges, so the fill covers exactly
    :meth:`fill_height` rows of pixels.

    Parameters
    ----------
    win : psychopy.visual.Window
        A window in ``"pix"`` units.
    geometry : ThermometerGeometry
        Sizes and position.
    """

    def __init__(self, win: Any, geometry: ThermometerGeometry | None = None) -> None:
        from psychopy import visual

        self.geometry = geometry if geometry is not None else ThermometerGeometry()
        g = self.geometry
        cx, cy = g.centre
        self._border = _rect(win, g.width + 2 * g.border, g.height + 2 * g.border, (cx, cy),
                             TUBE_BORDER)
        self._inside = _rect(win, g.width, g.height, (cx, cy), TUBE_INSIDE)
        self._fill = _rect(win, g.width, 2, (cx, cy), FILL)
        offset = g.width / 2 + g.border + 2 + g.marker_length / 2
        self._markers = [_rect(win, g.marker_length, 4, (cx + side * offset, g.marker_y), MARKER)
                         for side in (-1, 1)]
        self._arrows = {
            direction: visual.ShapeStim(
                win, vertices=[(-20, -sign * 16), (20, -sign * 16), (0, sign * 20)],
                pos=(cx + ARROW_X - THERMOMETER_X,
                     (g.top - ARROW_INSET) if sign > 0 else (g.bottom + ARROW_INSET)),
                units="pix", fillColor=TARGET, lineColor=None, lineWidth=0,
                colorSpace="rgb255", autoLog=False)
            for direction, sign in (("up", 1), ("down", -1))
        }
        self._color: tuple[int, int, int] | None = None

    def fill_height(self, value: float) -> int:
        """Height in pixels of the fill drawn for ``value`` (see ThermometerGeometry)."""
        return self.geometry.fill_height(value)

    def draw(self, value: float, color: tuple[int, int, int] = FILL,
             target: str = "none") -> None:
        """Draw the thermometer.

        The tube, the baseline ticks, the fill for ``value`` in ``color``, and an arrow
        toward the ``target`` direction (``"up"``, ``"down"``, or none).
        """
        self._border.draw()
        self._inside.draw()
        for marker in self._markers:
            marker.draw()
        if target in self._arrows:
            self._arrows[target].draw()
        x, y, width, height = self.geometry.fill_rect(value)
        if height > 0:
            if color != self._color:
                self._fill.fillColor = color
                self._color = color
            self._fill.size = (width, height)
            self._fill.pos = (x, y)
            self._fill.draw()


class RatingScaleDisplay:
    """A visual analogue scale: question, a line from 0 to 100 with labelled ends, a marker.

    Parameters
    ----------
    win : psychopy.visual.Window
        A window in ``"pix"`` units.
    question, low_label, high_label : str
        Texts of the scale.
    hint : str
        How to answer (which keys), shown below the scale.
    """

    def __init__(self, win: Any, question: str, low_label: str, high_label: str,
                 hint: str) -> None:
        self._question = _text(win, question, (0, 150), 30, TEXT)
        self._line = _rect(win, 2 * SCALE_HALF_WIDTH, 4, (0, 0), SCALE_LINE)
        self._ticks = [_rect(win, 4, 30, (side * SCALE_HALF_WIDTH, 0), SCALE_LINE)
                       for side in (-1, 1)]
        self._labels = [_text(win, low_label, (-SCALE_HALF_WIDTH, -50), 22, SOFT_TEXT, 260),
                        _text(win, high_label, (SCALE_HALF_WIDTH, -50), 22, SOFT_TEXT, 260)]
        self._hint = _text(win, hint, (0, -170), 22, SOFT_TEXT)
        self._marker = _rect(win, *MARKER_SIZE, (0, 0), MARKER)
        self._confirmed: bool | None = None

    def draw(self, position: float, confirmed: bool = False, question: bool = True) -> None:
        """Draw the scale with its marker at ``position`` (0-100), blue once confirmed.

        With its question unless ``question`` is False (a rating block shows its
        instruction).
        """
        if question:
            self._question.draw()
        for part in (self._line, *self._ticks, *self._labels):
            part.draw()
        if not confirmed:
            self._hint.draw()
        if confirmed != self._confirmed:
            self._marker.fillColor = FILL if confirmed else MARKER
            self._confirmed = confirmed
        self._marker.pos = (scale_x(position), 0)
        self._marker.draw()


@dataclass
class CuePicture:
    """One cue picture, loaded: its file, category, and texture (an ImageStim)."""

    path: Traversable
    category: str
    stimulus: Any


def load_pictures(win: Any, pictures: dict[str, list[Traversable]]
                  ) -> dict[str, list[CuePicture]]:
    """Read every picture from disk into a texture, fitted into :data:`PICTURE_BOX`.

    Raises
    ------
    InputError
        If a picture cannot be read as an image (the message names it).
    """
    from PIL import Image, UnidentifiedImageError
    from psychopy import visual

    loaded: dict[str, list[CuePicture]] = {}
    for category, paths in pictures.items():
        loaded[category] = []
        for path in paths:
            try:
                with path.open("rb") as handle, Image.open(handle) as image:
                    rgb = image.convert("RGB")
            except (OSError, UnidentifiedImageError) as exc:
                raise InputError(f"Cannot read cue picture {path}: {exc}") from None
            # Scaled once here, with a good filter, to the pixels it covers on screen: drawn
            # 1:1 it needs no filtering per frame (cheap even for software OpenGL).
            size = fitted_size(*rgb.size)
            if size != rgb.size:
                rgb = rgb.resize(size, Image.Resampling.LANCZOS)
            stimulus = visual.ImageStim(win, image=rgb, size=size, units="pix",
                                        pos=PICTURE_POS_ALONE, interpolate=False, autoLog=False)
            loaded[category].append(CuePicture(path=path, category=category, stimulus=stimulus))
    return loaded


class Screens:
    """Every stimulus of a run, built at once.

    Parameters
    ----------
    win : psychopy.visual.Window
        The window (``"pix"`` units).
    instructions : iterable of str
        Every instruction text of the paradigm.
    pictures : dict of str to list of Traversable
        The cue pictures to load (see :func:`feedback_display.pictures.find_pictures`).
    rating : tuple of str
        Question, low label, high label and key hint of the rating scale.
    """

    def __init__(self, win: Any, instructions: list[str], pictures: dict[str, list[Traversable]],
                 rating: tuple[str, str, str, str]) -> None:
        self.win = win
        self.geometry = thermometer_geometry()
        g = self.geometry
        self.thermometer = ThermometerDisplay(win, g)
        self.instructions = {text: _text(win, text, (0, INSTRUCTION_Y), 28, TEXT)
                             for text in instructions}
        self.waiting = _text(win, WAITING_TEXT, (0, 0), 32, TEXT)
        self.hold_still = _text(win, CENSORED_TEXT, (THERMOMETER_X, g.bottom - g.border - 45),
                                26, SOFT_TEXT, 300)
        self.result = _text(win, INTERMITTENT_TEXT, (THERMOMETER_X, g.bottom - g.border - 45),
                            26, SOFT_TEXT, 300)
        self.cross = [_rect(win, w, h, (0, 0), TEXT) for w, h in ((40, 4), (4, 40))]
        self.rating = RatingScaleDisplay(win, *rating)
        self.pictures = load_pictures(win, pictures)

    def prepare(self) -> None:
        """Draw every stimulus once and clear the buffer.

        A first draw builds textures and glyphs, which would otherwise make the first frame
        of a block late.
        """
        for stimulus in (*self.instructions.values(), self.waiting, self.hold_still,
                         self.result, *self.cross):
            stimulus.draw()
        for cues in self.pictures.values():
            for cue in cues:
                cue.stimulus.draw()
        for color in (FILL, CENSORED_FILL, NEUTRAL_FILL):
            for target in ("up", "down"):
                self.thermometer.draw(0.75, color=color, target=target)
        for confirmed in (False, True):
            self.rating.draw(50.0, confirmed=confirmed)
        self.win.clearBuffer()

    def draw_cross(self) -> None:
        """The fixation cross at the centre."""
        for part in self.cross:
            part.draw()

    def draw_picture(self, cue: CuePicture, with_thermometer: bool) -> None:
        """A cue picture, centred, or left of the thermometer."""
        pos = PICTURE_POS_WITH_THERMOMETER if with_thermometer else PICTURE_POS_ALONE
        if tuple(cue.stimulus.pos) != pos:
            cue.stimulus.pos = pos
        cue.stimulus.draw()

    def draw_block(self, block: Block, picture: CuePicture | None, thermometer: bool) -> None:
        """A run frame's background: the block's instruction, its fixation cross or picture.

        Parameters
        ----------
        block : Block
            The current block.
        picture : CuePicture or None
            The cue picture on screen, if any.
        thermometer : bool
            True if the thermometer is drawn too (the picture moves left of it).
        """
        self.instructions[block.instruction or block.condition.upper()].draw()
        if block.condition == "fixation" or (block.cue == "none" and not thermometer):
            self.draw_cross()
        if picture is not None:
            self.draw_picture(picture, with_thermometer=thermometer)

    def draw_bar(self, value: float, fill: str, target: str) -> None:
        """Draw the thermometer at ``value`` in the colour of ``fill`` (see :data:`FILLS`).

        With "Hold still" below it when the value is censored.
        """
        self.thermometer.draw(value, FILLS[fill], target)
        if fill == "censored":
            self.hold_still.draw()

    def draw_result(self, mean: float | None, target: str) -> None:
        """Draw an intermittent result: the block's mean with "Your result".

        Without a mean, the bar rests at baseline in its neutral colour.
        """
        if mean is None:
            self.thermometer.draw(BASELINE_VALUE, NEUTRAL_FILL, target)
        else:
            self.thermometer.draw(mean, FILL, target)
            self.result.draw()

    def draw_block_rating(self, block: Block, position: float, confirmed: bool) -> None:
        """A rating block: its instruction as the question (else the scale's own), the scale."""
        if block.instruction:
            self.instructions[block.instruction].draw()
        self.rating.draw(position, confirmed, question=not block.instruction)
