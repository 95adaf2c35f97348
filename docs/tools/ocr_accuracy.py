"""The OCR models at each precision a die runs, against onnxruntime on the same inputs (docs/placement.md).

    python docs/tools/ocr_accuracy.py

Inputs: the page examples/hospital.py renders for its first record, its line crops. Per model and precision:
the largest error of any output (as a share of the largest output) against onnxruntime running the file's
graph as written (and the detector's mean error: its output is a probability map); the recogniser's best class per time step agreeing with onnxruntime's; and the lines the
whole pipeline at that precision reads exactly as rendered.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parents[2] / "examples"))
from hospital import RECORDS, render  # noqa: E402

from chipfuse.frontends.model_files import OCR_FRAMES, ocr_models  # noqa: E402
from chipfuse.frontends.onnx_model import load_onnx  # noqa: E402
from chipfuse.runtime.cv import CV_PRECISIONS, CVProgram  # noqa: E402
from chipfuse.runtime.ocr import alphabet_of, boxes_from_map, cls_input, det_input, read_text, rec_input  # noqa: E402


def main() -> None:
    import onnxruntime as ort

    paths = ocr_models()
    models = {k: load_onnx(p, k, OCR_FRAMES[k]) for k, p in paths.items()}
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = {k: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"]) for k, p in paths.items()}
    page, lines = render(RECORDS[0])
    x, sy, sx = det_input(page)
    boxes = boxes_from_map(sess["ocr-det"].run(None, {"x": x})[0][0, 0], sy, sx, page.shape[:2])
    crops = [page[y0:y1, x0:x1] for x0, y0, x1, y1 in boxes]
    inputs = {"ocr-det": x, "ocr-cls": cls_input(crops), "ocr-rec": rec_input(crops)}
    refs = {k: sess[k].run(None, {models[k].input_name: v})[0] for k, v in inputs.items()}
    alphabet = alphabet_of(models["ocr-rec"].meta)
    print("| precision | det max error | det mean error | cls max error | rec max error | rec best class agrees | "
          "lines exact |")
    print("|---|---|---|---|---|---|---|")
    for p in CV_PRECISIONS:
        progs = {k: CVProgram(m, p) for k, m in models.items()}

        def run(name, arr, progs=progs):
            return progs[name].run({models[name].input_name: torch.from_numpy(arr)})[models[name].outputs[0]].numpy()

        err = {k: float(np.abs(run(k, v) - refs[k]).max() / np.abs(refs[k]).max()) for k, v in inputs.items()}
        det_mean = float(np.abs(run("ocr-det", inputs["ocr-det"]) - refs["ocr-det"]).mean())
        agree = float((run("ocr-rec", inputs["ocr-rec"]).argmax(-1) == refs["ocr-rec"].argmax(-1)).mean())
        read = [t.text for t in read_text(page, run, alphabet)]
        exact = sum(a == b for a, b in zip(read, lines))
        print(f"| {p} | {err['ocr-det']:.1e} | {det_mean:.1e} | {err['ocr-cls']:.1e} | {err['ocr-rec']:.1e} | {100 * agree:.1f}% | "
              f"{exact} of {len(lines)} |")


if __name__ == "__main__":
    main()
