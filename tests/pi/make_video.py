"""Make the `--camera` test video for scripts/pi-check from real lesion photos (host OpenCV).

    python tests/pi/make_video.py OUT.avi IMG... [--size 320x240] [--fps 5] [--repeat 1]

Each photo becomes `--repeat` frames, resized to `--size`. The codec is FFV1 (lossless): decoded
frames are then identical on every architecture, so a difference between the x86_64 and the
emulated ARM runs can only come from the runtime, not from the video decoder. (Lossy codecs are
not: OpenCV's FFmpeg decodes MJPG/mp4v 1-2 LSB differently on aarch64 than on x86_64.)
The file is read back here and must decode to exactly the frames written.
"""

from __future__ import annotations

import argparse
import sys

import cv2
import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("images", nargs="+")
    ap.add_argument("--size", default="320x240", help="WxH of the frames")
    ap.add_argument("--fps", type=float, default=5.0)
    ap.add_argument("--repeat", type=int, default=1, help="frames per photo")
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.lower().split("x"))

    frames: list[np.ndarray] = []
    for path in args.images:
        img = cv2.imread(path, cv2.IMREAD_COLOR)
        if img is None:
            print(f"make_video: cannot read {path}", file=sys.stderr)
            return 1
        interp = cv2.INTER_AREA if img.shape[1] > w else cv2.INTER_CUBIC
        frames += [cv2.resize(img, (w, h), interpolation=interp)] * args.repeat

    writer = cv2.VideoWriter(args.out, cv2.VideoWriter_fourcc(*"FFV1"), args.fps, (w, h))
    if not writer.isOpened():
        print(f"make_video: OpenCV cannot write FFV1 to {args.out}", file=sys.stderr)
        return 1
    for frame in frames:
        writer.write(frame)
    writer.release()

    cap = cv2.VideoCapture(args.out)
    back = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        back.append(frame)
    cap.release()
    if len(back) != len(frames) or any(
        not np.array_equal(a, b) for a, b in zip(back, frames, strict=True)
    ):
        print(f"make_video: {args.out} does not read back losslessly", file=sys.stderr)
        return 1
    print(f"{args.out}: {len(frames)} frames {w}x{h} FFV1 (lossless, verified)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
