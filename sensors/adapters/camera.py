"""``sensors camera``: an RGB camera and a 2D keypoint model -> ``rgb`` (COCO-17, pixels of 640x480).

Frames come through OpenCV: a V4L2 device (``--device /dev/video0`` or an index; a RealSense's
colour stream is one of its V4L2 nodes), a video file (``--video``) or a folder of images
(``--images``, sorted by name, ``--fps`` apart). The keypoint model is an ONNX file given by path
(``sensors.adapters.keypoints``: heatmap, SimCC or YOLO-pose outputs), run with onnxruntime.
Keypoints are mapped from the frame's real resolution to MM-Fi's 640x480 (``--fit``). A frame
whose person score is below ``--min-score`` sends nothing (counted as ``no_person``: a missing
frame, not a loss). Every frame's detector time (preprocessing + inference + decoding) is kept:
the statistics line and ``--report`` give its mean, median, 95th percentile and maximum.

Capture times: a live camera's frames are stamped when the driver hands them over (the
station clock); a video file's from its own timestamps, a folder's from ``--fps``, both replayed
from now (``--rate``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from sensors.adapters.keypoints import (
    LAYOUTS,
    NORMALIZE,
    KeypointModel,
    KeypointModelError,
    MMFiScale,
    parse_size,
)
from sensors.adapters.outlet import (
    AdapterError,
    Outlet,
    Pacer,
    Stop,
    add_outlet_arguments,
    add_rate_argument,
    modality_carrying,
    run_adapter,
)
from sensors.core import schema

log = logging.getLogger(__name__)

MODALITY = modality_carrying(schema.KEYPOINTS)   # the stream this adapter feeds

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


# ---------------------------------------------------------------------------------------------
# Frame sources: (device or recording time ns, BGR frame or None for an unreadable one)
# ---------------------------------------------------------------------------------------------
def image_frames(folder: Path, fps: float) -> Iterator[tuple[int, np.ndarray | None, str]]:
    import cv2

    folder = Path(folder)
    if not folder.is_dir():
        raise AdapterError(f"image folder {folder} not found")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise AdapterError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    for i, path in enumerate(files):
        yield int(i * 1e9 / fps), cv2.imread(str(path), cv2.IMREAD_COLOR), path.name


def video_frames(path: Path) -> Iterator[tuple[int, np.ndarray | None, str]]:
    import cv2

    path = Path(path)
    if not path.is_file():
        raise AdapterError(f"video {path} not found")
    cap = cv2.VideoCapture(str(path))
    ok, frame = cap.read() if cap.isOpened() else (False, None)
    if not ok:
        cap.release()
        raise AdapterError(f"OpenCV cannot decode {path}: is it a video file (e.g. mp4, avi, mkv)?")
    fps = cap.get(cv2.CAP_PROP_FPS) or 10.0
    try:
        i = 0
        while ok:
            ms = cap.get(cv2.CAP_PROP_POS_MSEC)
            t_ns = int(ms * 1e6) if ms > 0 or i == 0 else int(i * 1e9 / fps)
            yield t_ns, frame, f"{path.name}#{i}"
            ok, frame = cap.read()
            i += 1
    finally:
        cap.release()


def probe_recording(video: str | None, images: str | None, fps: float) -> None:
    """A recording must give a first frame OpenCV can decode."""
    frames = video_frames(Path(video)) if video else image_frames(Path(images), fps)
    try:
        _, first, name = next(frames)
    finally:
        frames.close()
    if first is None:
        raise AdapterError(f"OpenCV cannot decode the first image {name} of {images}")


def open_device(device: str, width: int | None, height: int | None, fps: float | None):
    import cv2

    target = int(device) if device.isdigit() else device
    cap = cv2.VideoCapture(target, cv2.CAP_V4L2)
    if not cap.isOpened():
        cap.release()
        raise AdapterError(f"cannot open camera {device} (V4L2): is it plugged in, and may this user read it "
                           f"(group video)? `v4l2-ctl --list-devices` lists the devices")
    for prop, value in ((cv2.CAP_PROP_FRAME_WIDTH, width), (cv2.CAP_PROP_FRAME_HEIGHT, height),
                        (cv2.CAP_PROP_FPS, fps)):
        if value:
            cap.set(prop, value)
    cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)       # the newest frame, not a queue of old ones
    return cap


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------
class _Detector:
    def __init__(self, outlet: Outlet, model: KeypointModel, fit: str, min_score: float, send_score: bool):
        self.outlet, self.model, self.fit, self.min_score, self.send_score = outlet, model, fit, min_score, send_score
        self._scale: MMFiScale | None = None

    def frame(self, t_ns: int, bgr: np.ndarray | None, name: str) -> None:
        import cv2

        if bgr is None or bgr.ndim != 3 or bgr.shape[2] != 3:
            log.warning("frame %s unreadable: dropped", name)
            self.outlet.lose(1, "read_error")
            return
        h, w = bgr.shape[:2]
        if self._scale is None or (self._scale.width, self._scale.height) != (w, h):
            self._scale = MMFiScale(w, h, self.fit)
            log.info("camera frames %dx%d -> MM-Fi 640x480 (%s)", w, h, self.fit)
        det = self.model.detect(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        self.outlet.stats.latency(det.seconds)
        if not (np.isfinite(det.kpts).all() and np.isfinite(det.score).all()):
            self.outlet.lose(1, "unusable")
            return
        if det.person < self.min_score:
            self.outlet.stats.event("no_person")
            return
        arrays = {"kpts": self._scale(det.kpts)}
        if self.send_score:
            arrays["score"] = det.score
        self.outlet.send(t_ns, **arrays)


def play(outlet: Outlet, stop: Stop, frames: Iterator, detector: _Detector, rate: float,
         start_ns: int | None = None) -> None:
    pacer = Pacer(rate, stop, start_ns)
    for t_dev, bgr, name in frames:
        t_ns = pacer.capture_ns(t_dev)
        if not pacer.wait(t_ns):
            break
        detector.frame(t_ns, bgr, name)
    outlet.stats.clock_resets = pacer.resets


def run_device(outlet: Outlet, stop: Stop, device: str, detector: _Detector, *, width, height, fps,
               reconnect_s: float, stall_s: float = 5.0) -> None:
    attempts, opened_once = 0, False
    while not stop:
        try:
            cap = open_device(device, width, height, fps)
        except AdapterError as err:
            if attempts % max(1, int(10 / reconnect_s)) == 0:
                log.warning("%s; retrying every %g s", err, reconnect_s)
            attempts += 1
            stop.wait(reconnect_s)
            continue
        if opened_once:
            outlet.stats.reconnects += 1
        opened_once, attempts = True, 0
        last_ok = time.monotonic()
        try:
            while not stop:
                ok, bgr = cap.read()
                received = time.time_ns()
                if ok:
                    last_ok = time.monotonic()
                    detector.frame(received, bgr, device)
                    continue
                if time.monotonic() - last_ok > stall_s:
                    log.warning("camera %s gives no frames for %g s: reopening", device, stall_s)
                    break
                stop.wait(0.05)
        finally:
            cap.release()


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def add_arguments(p) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--device", default=None, metavar="DEV", help="live: V4L2 device, /dev/video0 or an index")
    src.add_argument("--video", default=None, metavar="FILE", help="a recording: a video file")
    src.add_argument("--images", default=None, metavar="DIR", help="a recording: a folder of images, by name")
    p.add_argument("--model", required=True, metavar="ONNX", help="2D keypoint model (COCO-17), ONNX")
    p.add_argument("--layout", choices=LAYOUTS, default="auto", help="the model's outputs (default: from their shapes)")
    p.add_argument("--normalize", choices=NORMALIZE, default=None,
                   help="input scaling: unit (/255), imagenet (mean/std), none (0..255); default unit for "
                        "yolo-pose, imagenet otherwise")
    p.add_argument("--input-size", default=None, metavar="WxH", help="the model's input size if it is dynamic")
    p.add_argument("--fit", choices=("crop", "stretch"), default="crop",
                   help="frame -> 640x480: crop (centred 4:3, square pixels; default) or stretch")
    p.add_argument("--min-score", type=float, default=0.3, help="person score below which nothing is sent")
    p.add_argument("--no-score", action="store_true", help="do not send the per-keypoint score array")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    p.add_argument("--provider", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--fps", type=float, default=10.0, help="--images: frames per second; --device: requested rate")
    p.add_argument("--width", type=int, default=None, help="--device: requested width (e.g. 640)")
    p.add_argument("--height", type=int, default=None, help="--device: requested height (e.g. 480)")
    p.add_argument("--reconnect-s", type=float, default=1.0)
    add_rate_argument(p)
    add_outlet_arguments(p, MODALITY)


def run(args) -> int:
    import cv2  # noqa: F401 - a missing extra fails here, before waiting for the runtime

    try:
        if not Path(args.model).is_file():
            raise KeypointModelError(f"keypoint model {args.model} not found: give an ONNX file (--model)")
        if not args.fps > 0:
            raise ValueError(f"--fps must be > 0, got {args.fps}")
        size = parse_size(args.input_size) if args.input_size else None
        model = KeypointModel(args.model, layout=args.layout, normalize=args.normalize, input_size=size,
                              threads=args.threads, provider=args.provider)
    except ValueError as err:    # KeypointModelError too
        log.error("%s", err)
        return 2
    log.info("keypoint model %s: %s, input %dx%d, %s", args.model, model.layout, model.in_w, model.in_h, model.normalize)

    def loop(outlet: Outlet, stop: Stop) -> None:
        detector = _Detector(outlet, model, args.fit, args.min_score, not args.no_score)
        if args.device:
            run_device(outlet, stop, args.device, detector, width=args.width, height=args.height, fps=args.fps,
                       reconnect_s=args.reconnect_s)
        else:
            frames = video_frames(Path(args.video)) if args.video else image_frames(Path(args.images), args.fps)
            play(outlet, stop, frames, detector, args.rate, args.start_ns)

    return run_adapter(args, MODALITY, loop, recording=not args.device,
                       probe=None if args.device else lambda: probe_recording(args.video, args.images, args.fps))
