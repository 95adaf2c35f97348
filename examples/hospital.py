"""The talk's hospital that will not upload its records, on one emulated 4-die system.

    python examples/hospital.py [--system talk-4die-d2d] [--pages 3]

It renders synthetic patient records as images, places the OCR pipeline (text detection, direction,
recognition) and SmolLM2 over the dies (`chipfuse place`), reads every page on the dies, checks the
text read against the text rendered, then asks SmolLM2, on its die, a question about each record.
Nothing leaves the machine. At the end: each model's rate measured here beside the rate the placement
predicts for the system it was placed on.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from chipfuse import api
from chipfuse.runtime.ocr import alphabet_of, read_text
from chipfuse.runtime.workload import WorkloadDevice, llm_weights

HERE = Path(__file__).parent
RECORDS = [
    {"Patient": "Anna Berg, born 1961", "Ward": "B-12, bed 4", "Allergy": "penicillin",
     "Next scan": "MRT on Tuesday at 09:30", "Doctor": "Dr. Chen"},
    {"Patient": "Omar Haddad, born 1978", "Ward": "C-3, bed 1", "Allergy": "latex",
     "Next scan": "CT on Friday at 14:00", "Doctor": "Dr. Novak"},
    {"Patient": "Lena Vogel, born 1990", "Ward": "A-7, bed 2", "Allergy": "none known",
     "Next scan": "X-ray on Monday at 08:15", "Doctor": "Dr. Silva"},
]
QUESTION = "What is the patient allergic to, and when is the next scan?"


def render(record: dict[str, str], size: int = 34) -> tuple[np.ndarray, list[str]]:
    """A record as a page image (black on white, Pillow's own font) and its lines as rendered."""
    from PIL import Image, ImageDraw, ImageFont

    lines = [f"{k}: {v}" for k, v in record.items()]
    font = ImageFont.load_default(size=size)
    img = Image.new("RGB", (900, int(size * (1.5 + 2.2 * len(lines)))), "white")
    d = ImageDraw.Draw(img)
    for i, line in enumerate(lines):
        d.text((30, int(size * (0.7 + 2.2 * i))), line, fill="black", font=font)
    return np.asarray(img), lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--system", default="talk-4die-d2d")
    ap.add_argument("--workload", default=str(HERE / "hospital.yaml"))
    ap.add_argument("--pages", type=int, default=3, choices=range(1, len(RECORDS) + 1))
    a = ap.parse_args()

    placed = api.place(a.workload, a.system)
    print(f"placement of {placed.workload} on {placed.system}: {100 * placed.lam:.0f}% of every demand at once "
          f"({placed.method})")
    for d in placed.deployments:
        print(f"  {d.model:5s} {d.label}  predicted {d.rate:.3g} {d.unit}/s")
    t0 = time.perf_counter()
    with WorkloadDevice(placed.placement) as dev:
        print(f"dies started and loaded in {time.perf_counter() - t0:.1f} s\n")
        from chipfuse.runtime.tokenizer import load_tokenizer

        chat_name = next(m.name for m in placed.placement.models if m.kind == "llm")
        tok = load_tokenizer(llm_weights(dev.record(chat_name).source))
        roles = {m.source: m.name for m in placed.placement.models if m.kind == "cv"}
        ocr_role = {Path(src).name: name for src, name in roles.items()}
        names = {"ocr-det": _find(ocr_role, "det"), "ocr-cls": _find(ocr_role, "cls"), "ocr-rec": _find(ocr_role, "rec")}
        alphabet = alphabet_of(_meta(dev, names["ocr-rec"]))

        def run(model: str, x: np.ndarray) -> np.ndarray:
            out = dev.submit(names[model], x).result(300)
            return next(iter(out.values()))

        ocr_s = chat_s = 0.0
        exact = total = 0
        for i, record in enumerate(RECORDS[:a.pages]):
            page, lines = render(record)
            t = time.perf_counter()
            read = [line.text for line in read_text(page, run, alphabet)]
            ocr_s += time.perf_counter() - t
            total += len(lines)
            exact += sum(x == y for x, y in zip(read, lines))
            print(f"page {i + 1}: read on the dies ({len(read)} lines, {sum(x == y for x, y in zip(read, lines))} "
                  f"exactly as rendered)")
            for line in read:
                print(f"  | {line}")
            prompt = ("Here is a patient record:\n" + "\n".join(read) + f"\n\nQuestion: {QUESTION}\n"
                      "Answer in one sentence.")
            ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                          tokenize=True)
            ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "input_ids") else ids
            t = time.perf_counter()
            out = dev.submit(chat_name, list(ids), max_tokens=48, stop=[tok.eos_token_id]).result(300)
            chat_s += time.perf_counter() - t
            answer = tok.decode(out["tokens"].tolist(), skip_special_tokens=True).strip()
            print(f"  Q: {QUESTION}\n  A: {answer}\n")
        print(f"text read exactly as rendered: {exact} of {total} lines")
        frames = {name: sum(st.items) for name, st in dev.stats.items()}
        pred = {m.name: m.served for m in placed.placement.models}
        det, cls, rec = names["ocr-det"], names["ocr-cls"], names["ocr-rec"]
        print(f"\nOCR on the dies: {a.pages} pages in {ocr_s:.2f} s ({a.pages / ocr_s:.2f} pages/s; {frames[det]} "
              f"detector, {frames[cls]} direction and {frames[rec]} recogniser frames, host work included)")
        print(f"SmolLM2 on its die: {frames[chat_name]} tokens in {chat_s:.2f} s ({frames[chat_name] / chat_s:.1f} "
              "tokens/s, prefill included, one question at a time)")
        print(f"predicted for {placed.system}'s dies (the hardware placed on, not these emulated ones): "
              + ", ".join(f"{n} {pred[n]:.3g}/s" for n in (det, cls, rec, chat_name)))


def _find(roles: dict[str, str], word: str) -> str:
    for file, name in roles.items():
        if word in file.lower():
            return name
    raise SystemExit(f"the workload has no OCR model with '{word}' in its file name")


def _meta(dev: WorkloadDevice, name: str) -> dict:
    from chipfuse.frontends.onnx_model import load_onnx

    rec = dev.record(name)
    return load_onnx(rec.source, name, tuple(rec.frame or ())).meta


if __name__ == "__main__":
    main()
