"""The OCR pipeline's host work around its three models: detection -> boxes -> crops -> direction -> text.

The models (PP-OCRv4 detection and recognition, a mobile direction classifier) run wherever the
caller's `run(model, batch)` sends them: in this process or on the dies. What happens here is the
pre- and post-processing any deployment does on its host CPU, written from the models' published
conventions: inputs scaled to [-1, 1]; detection's probability map thresholded at 0.3 and its
regions kept when their mean probability is 0.5 or more, grown by area x 1.6 / perimeter (the DB
method's unclip); crops 48 pixels high; CTC decoding with the alphabet stored in the recogniser's
metadata (blank first, a space last). Boxes are axis-aligned: enough for level text.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

DET_LIMIT_SIDE = 736  # the shorter side is brought up to this (then both to multiples of 32)
DET_THRESH, BOX_THRESH, UNCLIP = 0.3, 0.5, 1.6
CLS_SHAPE, CLS_THRESH = (48, 192), 0.9
REC_HEIGHT, REC_MIN_WIDTH = 48, 320
MIN_BOX_SIDE = 3


@dataclass(frozen=True)
class TextLine:
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in the image's pixels
    text: str
    score: float  # mean probability of the characters read
    rotated: bool  # the direction classifier turned the crop by 180 degrees


def _normalise(rgb: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 RGB -> 3xHxW float32 in [-1, 1], channels in the BGR order the models were trained on."""
    x = rgb[..., ::-1].astype(np.float32) / 255.0
    return ((x - 0.5) / 0.5).transpose(2, 0, 1)


def _resize(rgb: np.ndarray, w: int, h: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR))


def det_input(rgb: np.ndarray) -> tuple[np.ndarray, float, float]:
    """The detector's input for an image, and the factors from its pixels back to the image's."""
    h, w = rgb.shape[:2]
    ratio = DET_LIMIT_SIDE / min(h, w) if min(h, w) < DET_LIMIT_SIDE else 1.0
    rh, rw = max(32, round(h * ratio / 32) * 32), max(32, round(w * ratio / 32) * 32)
    return _normalise(_resize(rgb, rw, rh))[None], h / rh, w / rw


def boxes_from_map(prob: np.ndarray, sy: float, sx: float, image_hw: tuple[int, int]) -> list[tuple[int, ...]]:
    """Text regions of a probability map (H x W), as boxes in the image's pixels, top to bottom, left to right."""
    from scipy import ndimage

    binary = ndimage.binary_dilation(prob > DET_THRESH, structure=np.ones((2, 2), bool))
    labels, n = ndimage.label(binary)
    boxes = []
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        ys, xs = sl
        bh, bw = ys.stop - ys.start, xs.stop - xs.start
        if min(bh, bw) < MIN_BOX_SIDE:
            continue
        if float(prob[sl][labels[sl] == k].mean()) < BOX_THRESH:
            continue
        grow = bh * bw * UNCLIP / (2 * (bh + bw))
        y0, y1 = (ys.start - grow) * sy, (ys.stop + grow) * sy
        x0, x1 = (xs.start - grow) * sx, (xs.stop + grow) * sx
        H, W = image_hw
        box = (max(0, int(x0)), max(0, int(y0)), min(W, int(math.ceil(x1))), min(H, int(math.ceil(y1))))
        if box[2] - box[0] >= MIN_BOX_SIDE and box[3] - box[1] >= MIN_BOX_SIDE:
            boxes.append(box)
    # reading order: by line (boxes whose tops are within half a line of each other), then left to right
    boxes.sort(key=lambda b: (b[1], b[0]))
    lines: list[list[tuple[int, ...]]] = []
    for b in boxes:
        if lines and abs(b[1] - lines[-1][0][1]) < 0.5 * (lines[-1][0][3] - lines[-1][0][1]):
            lines[-1].append(b)
        else:
            lines.append([b])
    return [b for line in lines for b in sorted(line, key=lambda b: b[0])]


def cls_input(crops: list[np.ndarray]) -> np.ndarray:
    h, w = CLS_SHAPE
    return np.stack([_fit(c, h, w) for c in crops])


def _fit(crop: np.ndarray, h: int, w: int) -> np.ndarray:
    """A crop scaled to height h (width in proportion, at most w), normalised, padded with 0 to width w."""
    ch, cw = crop.shape[:2]
    rw = min(w, max(1, int(math.ceil(h * cw / ch))))
    out = np.zeros((3, h, w), np.float32)
    out[:, :, :rw] = _normalise(_resize(crop, rw, h))
    return out


def rec_input(crops: list[np.ndarray]) -> np.ndarray:
    """One batch for the recogniser: every crop 48 high, the batch as wide as its widest crop's aspect asks."""
    ratio = max([REC_MIN_WIDTH / REC_HEIGHT] + [c.shape[1] / c.shape[0] for c in crops])
    w = int(math.ceil(REC_HEIGHT * ratio / 8) * 8)
    return np.stack([_fit(c, REC_HEIGHT, w) for c in crops])


def ctc_decode(probs: np.ndarray, alphabet: list[str]) -> list[tuple[str, float]]:
    """Greedy CTC: the best class per time step, repeats merged, blanks (class 0) dropped."""
    out = []
    for seq in probs:
        ids, best = seq.argmax(-1), seq.max(-1)
        keep = (ids != 0) & np.concatenate([[True], ids[1:] != ids[:-1]])
        text = "".join(alphabet[i] for i in ids[keep])
        out.append((text, float(best[keep].mean()) if keep.any() else 0.0))
    return out


def alphabet_of(meta: dict[str, str]) -> list[str]:
    """The recogniser's classes: blank, the characters stored in its metadata, a space."""
    if "character" not in meta:
        raise ValueError("the recognition model carries no `character` metadata (its alphabet)")
    return ["blank", *meta["character"].splitlines(), " "]


Runner = Callable[[str, np.ndarray], np.ndarray]  # (model name, input batch) -> the model's first output


def read_text(rgb: np.ndarray, run: Runner, alphabet: list[str]) -> list[TextLine]:
    """The text lines of an RGB image (H x W x 3, uint8), each model run by `run` ("ocr-det", "ocr-cls", "ocr-rec")."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"an RGB image is H x W x 3 uint8; got {rgb.shape} {rgb.dtype}")
    x, sy, sx = det_input(rgb)
    prob = run("ocr-det", x)[0, 0]
    boxes = boxes_from_map(prob, sy, sx, rgb.shape[:2])
    if not boxes:
        return []
    crops = [rgb[y0:y1, x0:x1] for x0, y0, x1, y1 in boxes]
    turn = run("ocr-cls", cls_input(crops))
    rotated = [bool(t.argmax() == 1 and t.max() >= CLS_THRESH) for t in turn]
    crops = [np.ascontiguousarray(c[::-1, ::-1]) if r else c for c, r in zip(crops, rotated)]
    read = ctc_decode(run("ocr-rec", rec_input(crops)), alphabet)
    return [TextLine(tuple(b), t, s, r) for b, (t, s), r in zip(boxes, read, rotated)]


__all__ = ["TextLine", "read_text", "alphabet_of", "ctc_decode", "det_input", "boxes_from_map", "cls_input",
           "rec_input"]
