"""Helpers of the display tests: a test-owned feedback publisher, keys sent through the X
server, and measurements of screenshots (bar height, colours, text, pictures).
"""

from __future__ import annotations

import csv
import os
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import zmq

from feedback_display.pictures import placeholder_image
from feedback_display.screens import (
    PICTURE_BOX,
    THERMOMETER_X,
    TUBE_BORDER,
    TUBE_INSIDE,
)
from rtserver import protocol

TUBE_HEIGHT = 500  # the specified inner height of the thermometer, in pixels
WINDOW = (1024, 768)  # --windowed

needs_display = pytest.mark.skipif(not os.environ.get("DISPLAY"),
                                   reason="needs an X display; run under xvfb-run")


def feedback_event(volume: int, value: float, censored: bool = False) -> protocol.FeedbackEvent:
    now = time.time()
    return protocol.FeedbackEvent(volume=volume, value=value, censored=censored, fd=0.1,
                                  rois={"nacc": 1.0}, t_received=now, t_published=now,
                                  latency_ms=4.0)


def bind_xpub(context: zmq.Context, address: str = "tcp://127.0.0.1") -> tuple[zmq.Socket, str]:
    """An XPUB socket on a random port (or on ``address`` if it names one)."""
    xpub = context.socket(zmq.XPUB)
    xpub.setsockopt(zmq.LINGER, 0)
    if address.count(":") == 2:
        # Rebinding the address of a socket just closed: ZeroMQ releases it on its I/O
        # thread, so retry for a bounded time while the port is still taken.
        deadline = time.monotonic() + 10.0
        while True:
            try:
                xpub.bind(address)
                return xpub, address
            except zmq.ZMQError as exc:
                if exc.errno != zmq.EADDRINUSE or time.monotonic() > deadline:
                    raise
                xpub.poll(50)  # an unbound socket: waits 50 ms
    port = xpub.bind_to_random_port(address)
    return xpub, f"{address}:{port}"


def wait_for_subscription(xpub: zmq.Socket, timeout: float,
                          process: subprocess.Popen | None = None) -> bytes:
    """Receive the subscriber's subscription message (an XPUB socket forwards it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if xpub.poll(250):
            return xpub.recv()
        if process is not None and process.poll() is not None:
            pytest.fail(f"the display exited ({process.returncode}) before subscribing")
    pytest.fail(f"no subscription within {timeout} s")


def press(*keys: str) -> None:
    """Press and release keys (X keysym names: ``Right``, ``space``, ``Escape``, ``t``) through
    the X server's XTEST extension, as a keyboard or button box would.
    """
    xlib = pytest.importorskip("Xlib", reason="python-xlib sends key presses (XTEST)")
    from Xlib import XK
    from Xlib.display import Display
    from Xlib.ext import xtest

    screen = Display()
    try:
        for key in keys:
            code = screen.keysym_to_keycode(XK.string_to_keysym(key))
            assert code, f"no keycode for {key!r}"
            xtest.fake_input(screen, xlib.X.KeyPress, code)
            xtest.fake_input(screen, xlib.X.KeyRelease, code)
            screen.sync()
    finally:
        screen.close()


def read_tsv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def load_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def is_color(pixels: np.ndarray, color: tuple[int, int, int], tolerance: int = 3) -> np.ndarray:
    return np.all(np.abs(pixels.astype(int) - np.array(color)) <= tolerance, axis=-1)


def runs_of(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of every run of True values."""
    padded = np.concatenate([[False], mask, [False]]).astype(int)
    changes = np.flatnonzero(np.diff(padded))
    return list(zip(changes[::2], changes[1::2], strict=True))


def to_image(x: float, y: float, image: np.ndarray) -> tuple[int, int]:
    """Row and column of the pixel at window coordinates (x, y) (pix units, y up)."""
    height, width = image.shape[:2]
    return int(height // 2 - y), int(width // 2 + x)


def measure_bar(image: np.ndarray) -> SimpleNamespace | None:
    """Measure the thermometer along its centre column.

    Returns None when no tube is drawn; else the tube's inner height, the fill's height in
    pixels (counted up from the inner bottom edge) and the fill's colour.
    """
    column = image[:, image.shape[1] // 2 + THERMOMETER_X]
    border = runs_of(is_color(column, TUBE_BORDER))
    if not border:
        return None
    inner_top, inner_bottom = border[0][1], border[-1][0]  # rows inside the outline
    inside = column[inner_top:inner_bottom]
    fill_runs = runs_of(~is_color(inside, TUBE_INSIDE))
    fill_height = 0
    if fill_runs:
        assert len(fill_runs) == 1, f"the fill is not one solid bar: {fill_runs}"
        start, stop = fill_runs[0]
        assert stop == len(inside), "the fill does not start at the tube's bottom"
        fill_height = stop - start
    return SimpleNamespace(inner_height=inner_bottom - inner_top, fill_height=fill_height,
                           fill_color=tuple(int(c) for c in inside[-1]) if fill_height else None,
                           inner_bottom=inner_bottom)


def ink(image: np.ndarray, x0: float, x1: float, y0: float, y1: float,
        color: tuple[int, int, int], tolerance: int = 60) -> int:
    """Pixels near ``color`` in the window rectangle x0..x1, y0..y1 (pix units, y up)."""
    top, left = to_image(x0, y1, image)
    bottom, right = to_image(x1, y0, image)
    return int(is_color(image[top:bottom, left:right], color, tolerance).sum())


def picture_difference(image: np.ndarray, category: str, index: int,
                       centre: tuple[int, int]) -> float:
    """Mean absolute difference (0-255) between the screenshot's picture area and the shipped
    placeholder ``index`` of ``category`` scaled as the display scales it; the outer 8 px
    are left out (edges are interpolated).
    """
    from PIL import Image

    width, height = PICTURE_BOX  # the 320x240 placeholders fill the box exactly (x1.5)
    expected = np.asarray(Image.fromarray(placeholder_image(category, index))
                          .resize((width, height), Image.Resampling.LANCZOS)).astype(int)
    top, left = to_image(centre[0] - width / 2, centre[1] + height / 2, image)
    shown = image[top:top + height, left:left + width].astype(int)
    margin = 8
    return float(np.abs(shown - expected)[margin:-margin, margin:-margin].mean())
