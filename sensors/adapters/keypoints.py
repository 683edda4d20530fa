"""2D keypoints from an ONNX model (onnxruntime), in MM-Fi's convention: COCO-17 order, pixels of
a 640x480 image.

A frame of any resolution is letterboxed (aspect kept, zero padding) into the model's input
(NCHW float32, RGB; scaled by ``normalize``), the output is decoded by ``layout``, and the
keypoints are mapped back to the frame and then to 640x480 (``MMFiScale``). Layouts, detected
from the output shapes when ``auto``:

* ``heatmap``: one output [1, 17, h, w] (top-down models such as HRNet/ViTPose exports): the
  peak of each map, a quarter-pixel step towards the higher neighbour, times the input/heatmap
  stride; score = the peak value.
* ``simcc``: two outputs [1, 17, Wx] and [1, 17, Hy] (RTMPose): argmax of each, divided by the
  split ratio Wx / input width; score = the smaller of the two maxima.
* ``yolo-pose``: one output [1, 56, A] or [1, A, 56] (YOLOv8/11-pose: box cx, cy, w, h, person
  score, then 17 x (x, y, visibility) in input pixels): the anchor with the highest person score.

No detector model ships with any package on the registry this project installs from (the current
mediapipe wheel no longer carries its pose model: docs/sensors.md); give the model by path.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from sensors.core import schema

LAYOUTS = ("auto", "heatmap", "simcc", "yolo-pose")
NORMALIZE = ("unit", "imagenet", "none")
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
YOLO_POSE_CHANNELS = 5 + 3 * schema.N_KEYPOINTS     # 56


class KeypointModelError(ValueError):
    """The ONNX file is not a keypoint model this adapter can decode."""


@dataclass(frozen=True)
class MMFiScale:
    """Frame pixels -> pixels of MM-Fi's 640x480 image. ``fit="crop"``: the centred 4:3 part of the
    frame becomes 640x480 (pixels stay square; points outside it fall outside [0, 640) x [0, 480));
    ``fit="stretch"``: each axis scaled on its own (distorts a frame that is not 4:3)."""

    width: int
    height: int
    fit: str = "crop"

    def box(self) -> tuple[float, float, float, float]:
        """(x0, y0, w, h) of the frame region that maps onto 640x480."""
        w, h = float(self.width), float(self.height)
        if self.fit == "stretch":
            return 0.0, 0.0, w, h
        if self.fit != "crop":
            raise ValueError(f"fit must be 'crop' or 'stretch', got {self.fit!r}")
        target = schema.IMAGE_WIDTH / schema.IMAGE_HEIGHT
        if w / h > target:                      # wider than 4:3: crop the sides
            cw = h * target
            return (w - cw) / 2, 0.0, cw, h
        ch = w / target                         # taller: crop top and bottom
        return 0.0, (h - ch) / 2, w, ch

    def __call__(self, kpts: np.ndarray) -> np.ndarray:
        x0, y0, w, h = self.box()
        out = np.empty_like(kpts, dtype=np.float32)
        out[:, 0] = (kpts[:, 0] - x0) * (schema.IMAGE_WIDTH / w)
        out[:, 1] = (kpts[:, 1] - y0) * (schema.IMAGE_HEIGHT / h)
        return out


@dataclass
class Detection:
    kpts: np.ndarray            # float32 [17, 2], pixels of the frame given
    score: np.ndarray           # float32 [17]
    person: float               # person score (yolo-pose) or mean keypoint score
    seconds: float              # preprocessing + inference + decoding


class KeypointModel:
    """An ONNX keypoint model: ``detect(frame_rgb)`` -> keypoints in the frame's pixels."""

    def __init__(self, path: str, *, layout: str = "auto", normalize: str | None = None,
                 input_size: tuple[int, int] | None = None, threads: int = 1, provider: str = "cpu"):
        import onnxruntime as ort

        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if provider == "cuda" else ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=providers)
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise KeypointModelError(f"onnxruntime cannot load {path}: {str(err).splitlines()[0][:300]}") from None
        inp = self.session.get_inputs()
        if len(inp) != 1 or len(inp[0].shape) != 4:
            raise KeypointModelError(f"{path}: expected one image input [1, 3, H, W], got "
                                     f"{[(i.name, i.shape) for i in inp]}")
        self.input_name = inp[0].name
        self.in_h, self.in_w = self._input_hw(inp[0].shape, input_size, path)
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.layout = self._layout(layout, path) if layout == "auto" else layout
        self.normalize = normalize or ("unit" if self.layout == "yolo-pose" else "imagenet")
        if self.normalize not in NORMALIZE:
            raise ValueError(f"normalize must be one of {NORMALIZE}, got {self.normalize!r}")

    @staticmethod
    def _input_hw(shape, input_size, path) -> tuple[int, int]:
        if shape[1] not in (3, "3") and isinstance(shape[1], int):
            raise KeypointModelError(f"{path}: input has {shape[1]} channels; expected NCHW with 3 (RGB)")
        if input_size is not None:
            return input_size[1], input_size[0]
        h, w = shape[2], shape[3]
        if not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0):
            raise KeypointModelError(f"{path}: the input size is dynamic ({shape}); give it with --input-size WxH")
        return h, w

    def _layout(self, layout: str, path) -> str:
        shapes = [o.shape for o in self.session.get_outputs()]
        k = schema.N_KEYPOINTS
        if len(shapes) >= 2 and all(len(s) == 3 and s[1] == k for s in shapes[:2]):
            return "simcc"
        s = shapes[0]
        if len(s) == 4 and s[1] == k:
            return "heatmap"
        if len(s) == 3 and YOLO_POSE_CHANNELS in (s[1], s[2]):
            return "yolo-pose"
        raise KeypointModelError(f"{path}: cannot tell the output layout from the shapes {shapes}; expected "
                                 f"[1,17,h,w] (heatmap), [1,17,Wx] + [1,17,Hy] (simcc) or [1,56,A] (yolo-pose); "
                                 f"or give --layout")

    # -- preprocessing --------------------------------------------------------------------------
    def letterbox(self, rgb: np.ndarray) -> tuple[np.ndarray, float, float, float]:
        """uint8 [H, W, 3] -> float32 [1, 3, in_h, in_w], scale, pad_x, pad_y."""
        import cv2

        h, w = rgb.shape[:2]
        scale = min(self.in_w / w, self.in_h / h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        canvas = np.zeros((self.in_h, self.in_w, 3), np.uint8)
        px, py = (self.in_w - nw) // 2, (self.in_h - nh) // 2
        canvas[py:py + nh, px:px + nw] = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_LINEAR)
        x = canvas.astype(np.float32)
        if self.normalize == "unit":
            x /= 255.0
        elif self.normalize == "imagenet":
            x = (x / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
        return np.ascontiguousarray(x.transpose(2, 0, 1)[None]), scale, float(px), float(py)

    # -- inference ------------------------------------------------------------------------------
    def detect(self, rgb: np.ndarray) -> Detection:
        t0 = time.perf_counter()
        x, scale, px, py = self.letterbox(rgb)
        outs = self.session.run(self.outputs, {self.input_name: x})
        kpts, score, person = DECODERS[self.layout](outs, self.in_w, self.in_h)
        kpts = (kpts - np.array([px, py], np.float32)) / scale
        return Detection(kpts.astype(np.float32), score.astype(np.float32), float(person), time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------
# Decoders: model outputs -> (kpts [17, 2] in input pixels, score [17], person score)
# ---------------------------------------------------------------------------------------------
def decode_heatmap(outs, in_w: int, in_h: int):
    hm = np.asarray(outs[0], np.float32)[0]                       # [17, h, w]
    k, h, w = hm.shape
    flat = hm.reshape(k, -1)
    idx = flat.argmax(axis=1)
    score = flat[np.arange(k), idx]
    y, x = np.divmod(idx, w)
    xf, yf = x.astype(np.float32), y.astype(np.float32)
    for j in range(k):                                            # quarter-pixel refinement
        if 0 < x[j] < w - 1:
            xf[j] += 0.25 * np.sign(hm[j, y[j], x[j] + 1] - hm[j, y[j], x[j] - 1])
        if 0 < y[j] < h - 1:
            yf[j] += 0.25 * np.sign(hm[j, y[j] + 1, x[j]] - hm[j, y[j] - 1, x[j]])
    kpts = np.stack([xf * (in_w / w), yf * (in_h / h)], axis=1)
    return kpts, score, float(score.mean())


def decode_simcc(outs, in_w: int, in_h: int):
    sx, sy = (np.asarray(o, np.float32)[0] for o in outs[:2])     # [17, Wx], [17, Hy]
    x, y = sx.argmax(axis=1), sy.argmax(axis=1)
    score = np.minimum(sx.max(axis=1), sy.max(axis=1))
    kpts = np.stack([x / (sx.shape[1] / in_w), y / (sy.shape[1] / in_h)], axis=1).astype(np.float32)
    return kpts, score, float(score.mean())


def decode_yolo_pose(outs, in_w: int, in_h: int):
    out = np.asarray(outs[0], np.float32)[0]
    if out.shape[0] == YOLO_POSE_CHANNELS and out.shape[1] != YOLO_POSE_CHANNELS:
        out = out.T                                               # [A, 56]
    best = int(out[:, 4].argmax())
    row = out[best]
    kp = row[5:].reshape(schema.N_KEYPOINTS, 3)
    return kp[:, :2].copy(), kp[:, 2].copy(), float(row[4])


DECODERS = {"heatmap": decode_heatmap, "simcc": decode_simcc, "yolo-pose": decode_yolo_pose}


def parse_size(text: str) -> tuple[int, int]:
    """``"256x192"`` -> (256, 192) = (width, height)."""
    w, sep, h = text.lower().partition("x")
    if not sep or not w.isdigit() or not h.isdigit() or not (0 < int(w) <= 4096 and 0 < int(h) <= 4096):
        raise ValueError(f"size must be WIDTHxHEIGHT in pixels, e.g. 256x192; got {text!r}")
    return int(w), int(h)

