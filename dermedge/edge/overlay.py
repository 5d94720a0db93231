"""What a camera session shows: the overlay drawn on each frame and the --preview window.

Only the display lives here (OpenCV drawing and highgui); the session decides what to show.
"""

from __future__ import annotations

import os
from typing import Any

import cv2
import numpy as np

from dermedge import DISCLAIMER
from dermedge.edge.runtime import EdgeError


def draw_overlay(frame_bgr: np.ndarray, state: dict[str, Any]) -> np.ndarray:
    """The preview image: frame, circular guide, quality, probability, decision, disclaimer."""
    img = frame_bgr.copy()
    h, w = img.shape[:2]
    decision, reason = state.get("decision"), state.get("reason")
    sends_on = decision in ("refer", "cannot assess")  # red: the patient is sent on
    color = (0, 200, 255) if reason else (0, 0, 255) if sends_on else (0, 200, 0)
    cv2.circle(img, (w // 2, h // 2), int(0.45 * min(h, w)), color, 2, cv2.LINE_AA)
    scale = max(0.4, min(h, w) / 800)
    if reason:
        line = reason.upper()
    elif decision:
        words = "CANNOT ASSESS: REFER" if decision == "cannot assess" else decision.upper()
        line = f"{words}  P(malignant)={state['prob']:.2f}  ({state['votes']})"
    else:
        line = "hold steady..."
    for y, text, s, c in (
        (int(40 * scale), line, scale, color),
        (h - 12, DISCLAIMER, scale * 0.45, (255, 255, 255)),
    ):
        cv2.putText(img, text, (10, y), cv2.FONT_HERSHEY_SIMPLEX, s, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(img, text, (10, y), cv2.FONT_HERSHEY_SIMPLEX, s, c, 1, cv2.LINE_AA)
    return img


class Preview:
    """A highgui window; `s` saves the current frame, `q`/Esc quits."""

    WINDOW = "dermedge edge-classify"

    def __init__(self) -> None:
        """Open the window; EdgeError without a display or without OpenCV's GUI support."""
        if os.name == "posix" and not (
            os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
        ):
            raise EdgeError("--preview needs a display (DISPLAY is not set); run without --preview")
        try:
            cv2.namedWindow(self.WINDOW, cv2.WINDOW_NORMAL)
        except cv2.error as e:
            raise EdgeError(
                "--preview needs OpenCV with GUI support, and this install is headless "
                "(opencv-python-headless): pip install opencv-python, or run without --preview"
            ) from e

    def show(self, frame_bgr: np.ndarray, state: dict[str, Any]) -> str | None:
        """Show a frame with its overlay; "save" or "quit" when that key was pressed, else None."""
        cv2.imshow(self.WINDOW, draw_overlay(frame_bgr, state))
        key = cv2.waitKey(1) & 0xFF
        return "save" if key == ord("s") else "quit" if key in (ord("q"), 27) else None

    def close(self) -> None:
        """Close the window."""
        cv2.destroyWindow(self.WINDOW)
