"""Frame sources of a camera session: a camera, video file or stream via OpenCV, or the Pi camera.

Each source opens, reads BGR frames (None for a frame that failed) and closes, so the session
treats them all alike. dermedge.edge.camera quiets OpenCV's per-frame logging before cv2 loads.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

import cv2
import numpy as np

from dermedge.edge.runtime import EdgeError

URL_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "rtmp://", "udp://", "tcp://")
STREAM_TIMEOUT_MS = 5000
PICAMERA_MISSING = (
    "--picamera needs the picamera2 package, which is not installed. On Raspberry Pi OS: "
    "sudo apt install python3-picamera2, and create the virtualenv with --system-site-packages. "
    "(OpenCV cannot read the Pi's CSI camera on the libcamera stack; a USB camera works with "
    "--camera 0.)"
)


class SourceError(RuntimeError):
    """A frame source that cannot be opened (now); retried when --reconnect allows."""


class FrameSource(Protocol):
    """What a session reads: a `live` source is retried when it drops; a file has `expected` frames."""

    description: str
    live: bool
    expected: int | None

    def open(self) -> None:
        """Open (or reopen) the source; SourceError when it cannot be opened now."""
        ...

    def read(self) -> np.ndarray | None:
        """The next BGR frame, or None for a frame that failed."""
        ...

    def close(self) -> None:
        """Release the source (safe to call twice)."""
        ...


def _usable(frame: Any) -> bool:
    """A decoded HxWx3 image with pixels (not an empty or odd-shaped buffer)."""
    return (
        isinstance(frame, np.ndarray) and frame.ndim == 3 and frame.shape[2] == 3 and frame.size > 0
    )


class OpenCVSource:
    """A camera index or /dev/videoN, a video file, or an RTSP/HTTP stream URL, via OpenCV."""

    def __init__(
        self,
        spec: str,
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
    ) -> None:
        """A source for `spec`; width, height and fps are requested from a camera device only."""
        self.spec = spec
        self.is_url = spec.lower().startswith(URL_SCHEMES)
        self.is_device = spec.isdigit() or spec.startswith("/dev/")
        self.live = self.is_url or self.is_device
        self.description = f"camera {spec}" if self.is_device else spec
        self.requested = {
            cv2.CAP_PROP_FRAME_WIDTH: width,
            cv2.CAP_PROP_FRAME_HEIGHT: height,
            cv2.CAP_PROP_FPS: fps,
        }
        self.expected: int | None = None
        self.cap: Any = None

    def _capture(self) -> Any:
        """The cv2.VideoCapture for the spec (a stream gets open and read timeouts)."""
        if self.is_url:
            timeouts = [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
                STREAM_TIMEOUT_MS,
                cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                STREAM_TIMEOUT_MS,
            ]
            return cv2.VideoCapture(self.spec, cv2.CAP_FFMPEG, timeouts)
        if self.spec.isdigit():
            return cv2.VideoCapture(int(self.spec))
        return cv2.VideoCapture(self.spec)

    def _open_error(self) -> str:
        """Why the spec did not open, in words for the user."""
        if self.is_url:
            return f"cannot open stream {self.spec} (unreachable, wrong path or not a video stream)"
        if self.is_device:
            return (
                f"cannot open camera {self.spec}: no such device, or it is busy "
                "(list cameras with: v4l2-ctl --list-devices)"
            )
        if not os.path.isfile(self.spec):
            return f"video file not found: {self.spec}"
        return f"cannot decode video file {self.spec} (unsupported or corrupt container)"

    def open(self) -> None:
        """Open (or reopen) the capture; SourceError with the reason if it does not open."""
        self.close()
        if not self.live and not os.path.isfile(self.spec):
            raise SourceError(self._open_error())
        cap = self._capture()
        if not cap.isOpened():
            cap.release()
            raise SourceError(self._open_error())
        if self.is_device:
            for prop, value in self.requested.items():
                if value:
                    cap.set(prop, value)
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # newest frame, not a stale queue
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        self.expected = count if not self.live and count > 0 else None
        self.cap = cap

    def read(self) -> np.ndarray | None:
        """The next BGR frame, or None for a failed or unusable read."""
        ok, frame = self.cap.read()
        return frame if ok and _usable(frame) else None

    def close(self) -> None:
        """Release the capture (safe to call twice)."""
        if self.cap is not None:
            self.cap.release()
            self.cap = None


class PiCameraSource:
    """The Raspberry Pi camera through picamera2 (libcamera)."""

    live: bool = True
    expected: int | None = None
    description: str = "Raspberry Pi camera"

    def __init__(
        self, width: int | None = None, height: int | None = None, fps: float | None = None
    ) -> None:
        """The camera at this size (640x480 by default) and frame rate (its own by default)."""
        self.size = (width or 640, height or 480)
        self.fps = fps
        self.camera: Any = None

    def open(self) -> None:
        """Configure and start the camera; EdgeError without picamera2, SourceError if it fails."""
        try:
            from picamera2 import Picamera2
        except ImportError as e:
            raise EdgeError(PICAMERA_MISSING) from e
        self.close()
        try:
            camera = Picamera2()
            controls = {"FrameRate": float(self.fps)} if self.fps else {}
            # "RGB888" is B,G,R in memory: OpenCV's order, like the other sources.
            config = camera.create_video_configuration(
                main={"size": self.size, "format": "RGB888"}, controls=controls
            )
            camera.configure(config)
            camera.start()
        except Exception as e:  # noqa: BLE001 - libcamera raises many kinds
            raise SourceError(f"cannot start the Raspberry Pi camera: {e}") from e
        self.camera = camera

    def read(self) -> np.ndarray | None:
        """The next BGR frame, or None for a dropped one."""
        try:
            frame = self.camera.capture_array("main")
        except Exception:  # noqa: BLE001 - a dropped frame, retried by the session
            return None
        return frame[..., :3] if _usable(frame[..., :3]) else None

    def close(self) -> None:
        """Stop and close the camera (safe to call twice)."""
        if self.camera is not None:
            self.camera.stop()
            self.camera.close()
            self.camera = None
