"""Frame sources: image folders, single images, video files and cameras.

Every source yields :class:`Frame` objects (RGB uint8, optional label, origin).
A file that cannot be read is skipped and recorded in ``source.skipped``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import CALIBRATION_IMAGES
from .models import RESOURCES, imagenet_classes

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}
SAMPLES = RESOURCES / "samples"
_WNID = re.compile(r"^(n\d{8})")


class SourceError(Exception):
    """A source cannot be opened; the message says why, for the user."""


@dataclass(frozen=True)
class Frame:
    rgb: np.ndarray
    origin: str
    label: int | None = None  # ImageNet class index when known


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


MAX_SIDE = 4096  # frames are reduced on load to at most this many pixels a side
MAX_DECODE_PIXELS = 100_000_000  # the most pixels decoded at once (300 MB of RGB)


def read_image(path: Path, max_side: int = MAX_SIDE) -> np.ndarray:
    """RGB uint8 array of an image file, upright (EXIF orientation applied), at most
    ``max_side`` pixels a side (grayscale, palette, CMYK, 16-bit and alpha converted).

    Memory stays bounded: a large JPEG decodes reduced (1/2 to 1/8 scale) straight from the
    file; anything that would decode to more than MAX_DECODE_PIXELS (a PNG "bomb", a huge
    TIFF) is refused with the reason instead of taking the machine's memory."""
    from PIL import Image, ImageOps

    Image.MAX_IMAGE_PIXELS = None  # PIL's own bomb check would refuse huge JPEGs we can decode reduced
    with Image.open(path) as im:
        w, h = im.size
        if max(w, h) > max_side and im.format == "JPEG":  # DCT scaling: between max_side / 2 and max_side
            scale = 2 * max(w, h) / max_side
            im.draft(im.mode, (max(1, round(w / scale)), max(1, round(h / scale))))
        decoded = im.size[0] * im.size[1]
        if decoded > MAX_DECODE_PIXELS:
            raise ValueError(f"{w}x{h} {im.format} image is too large to decode safely "
                             f"(more than {MAX_DECODE_PIXELS // 1_000_000} megapixels"
                             f"{'' if im.format == 'JPEG' else '; a JPEG this size would be read reduced'})")
        im = ImageOps.exif_transpose(im)  # phone photos are stored sideways with a tag
        if max(im.size) > max_side:
            im.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
        return np.asarray(im.convert("RGB"))


def _label_for(path: Path, root: Path) -> int | None:
    wnids, names = imagenet_classes()
    by_wnid = {w: i for i, w in enumerate(wnids)}
    m = _WNID.match(path.name)
    if m and m.group(1) in by_wnid:
        return by_wnid[m.group(1)]
    if path.parent != root:
        folder = path.parent.name
        if folder in by_wnid:
            return by_wnid[folder]
        by_name = {n.lower().replace(" ", "_"): i for i, n in enumerate(names)}
        return by_name.get(folder.lower().replace(" ", "_"))
    return None


def spread_first(items: list, n: int) -> list:
    """``items`` with ``n`` of them, spread evenly over the list, moved to the front; both
    parts keep their order. A folder sorted by name is often sorted by class, and its first
    images would calibrate on a few classes only (and none of those scored)."""
    if n <= 0 or len(items) <= n:
        return list(items)
    picked = {(2 * i + 1) * len(items) // (2 * n) for i in range(n)}  # centres of n equal slices
    return [items[i] for i in sorted(picked)] + [x for i, x in enumerate(items) if i not in picked]


@dataclass
class ImageFolderSource:
    """All images under a folder (recursive), with labels when found: in name order (the
    first ``limit``), except that ``calibration`` of them, spread evenly over that order,
    come first (:func:`spread_first`): the first frames of every source calibrate."""

    root: Path
    limit: int | None = None
    calibration: int = 0
    skipped: list[Skipped] = field(default_factory=list)

    def __post_init__(self):
        self.root = Path(self.root)
        if not self.root.is_dir():
            raise SourceError(f"not a folder: {self.root}")
        files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise SourceError(f"no images in {self.root}")
        files = files[: self.limit] if self.limit else files
        self.spread = 0 < self.calibration < len(files)  # calibration images moved to the front
        self.files = spread_first(files, self.calibration)

    @property
    def name(self) -> str:
        return str(self.root)

    @property
    def labelled(self) -> bool:
        return any(_label_for(p, self.root) is not None for p in self.files[:20])

    def __len__(self) -> int:
        return len(self.files)

    def frame(self, i: int) -> Frame | None:
        """Frame ``i``, or None (and recorded in ``skipped``) if it cannot be read."""
        path = self.files[i]
        try:
            rgb = read_image(path)
        except Exception as exc:  # PIL raises many kinds for a bad file
            if not any(s.path == str(path) for s in self.skipped):
                self.skipped.append(Skipped(str(path), f"{type(exc).__name__}: {exc}"))
            return None
        return Frame(rgb, str(path), _label_for(path, self.root))

    def __iter__(self) -> Iterator[Frame]:
        for i in range(len(self.files)):
            frame = self.frame(i)
            if frame is not None:
                yield frame


class SingleImageSource(ImageFolderSource):
    def __init__(self, path: Path):
        path = Path(path)
        if not path.is_file():
            raise SourceError(f"no such image: {path}")
        self.root, self.limit, self.calibration, self.skipped, self.files = path.parent, None, 0, [], [path]
        self.spread = False


@dataclass
class VideoSource:
    """A video file or a camera (an int index), read with OpenCV."""

    target: str | int
    limit: int | None = None
    loop: bool = False
    size: tuple[int, int] | None = None  # a camera's resolution to ask for (it may give another)
    skipped: list[Skipped] = field(default_factory=list)
    labelled = False

    def __post_init__(self):
        import cv2

        self._cap = cv2.VideoCapture(self.target)
        if not self._cap.isOpened():
            self._cap.release()
            if isinstance(self.target, int):
                raise SourceError(f"camera {self.target} cannot be opened (absent, busy, or no permission)")
            raise SourceError(f"cannot open video {self.target}")
        if self.size and isinstance(self.target, int):
            self._cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.size[0])
            self._cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.size[1])
        self.fps = self._cap.get(cv2.CAP_PROP_FPS) or 30.0

    @property
    def name(self) -> str:
        return f"camera {self.target}" if isinstance(self.target, int) else str(self.target)

    def read(self) -> Frame | None:
        """The next frame, or None at the end (or when a camera stops delivering)."""
        import cv2

        ok, bgr = self._cap.read()
        if not ok and self.loop and not isinstance(self.target, int):
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, bgr = self._cap.read()
        if not ok:
            return None
        pos = int(self._cap.get(cv2.CAP_PROP_POS_FRAMES))
        return Frame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), f"{self.name}#{pos}")

    def __iter__(self) -> Iterator[Frame]:
        n = 0
        while self.limit is None or n < self.limit:
            frame = self.read()
            if frame is None:
                return
            n += 1
            yield frame

    @property
    def position(self) -> int:
        """Frames read since the start (or the last rewind)."""
        import cv2

        return 0 if isinstance(self.target, int) else int(self._cap.get(cv2.CAP_PROP_POS_FRAMES) or 0)

    @property
    def frame_count(self) -> int | None:
        """Frames the video's header announces (None for a camera, or when it does not say)."""
        import cv2

        if isinstance(self.target, int):
            return None
        n = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        return n if n > 0 else None

    def rewind(self) -> None:
        import cv2

        self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)

    def release(self) -> None:
        self._cap.release()

    @property
    def released(self) -> bool:
        return not self._cap.isOpened()


def open_source(spec: str | Path | int | None, limit: int | None = None, calibration: int = CALIBRATION_IMAGES):
    """A source from what the user typed: None (sample photos), a folder, an image,
    a video file, or a camera index ("0", "camera:0", "camera:0@1280x720" for a resolution).
    A folder puts ``calibration`` images spread over it first (:class:`ImageFolderSource`)."""
    if spec is None or spec == "samples":
        return ImageFolderSource(SAMPLES, limit, calibration)
    if isinstance(spec, int):
        return VideoSource(spec, limit)
    text = str(spec)
    if text.isdigit() or text.startswith("camera:"):
        index, _, size = text.removeprefix("camera:").partition("@")
        try:
            wh = tuple(int(v) for v in size.lower().split("x")) if size else None
            if wh is not None and (len(wh) != 2 or min(wh) <= 0):
                raise ValueError
            return VideoSource(int(index), limit, size=wh)
        except ValueError:
            raise SourceError(f"not a camera: {text!r} (write camera:N or camera:N@WIDTHxHEIGHT)") from None
    path = Path(text).expanduser()
    if path.is_dir():
        return ImageFolderSource(path, limit, calibration)
    if not path.exists():
        raise SourceError(f"no such file or folder: {path}")
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return VideoSource(str(path), limit)
    return SingleImageSource(path)


def list_cameras(max_index: int = 4) -> list[int]:
    """Indices of the cameras OpenCV can open now."""
    import os
    import sys

    import cv2

    if sys.platform.startswith("linux") and not any(os.path.exists(f"/dev/video{i}") for i in range(max_index)):
        return []
    found = []
    for i in range(max_index):
        cap = cv2.VideoCapture(i)
        if cap.isOpened():
            found.append(i)
        cap.release()
    return found
