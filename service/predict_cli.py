"""`imgclf predict`: top-k labels for image files from an exported model, optionally annotated."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    """Add `imgclf predict`."""
    p = sub.add_parser("predict", help="predict the labels of image files with an exported model",
                       description="Print the top-k labels of each IMAGE with a model from the repository. "
                                   "A bad image is reported and skipped; the rest are predicted.")
    p.add_argument("images", type=Path, nargs="+", metavar="IMAGE")
    p.add_argument("--model", required=True, metavar="REPO/NAME[/VERSION]",
                   help="model version directory, or a model directory (newest version)")
    p.add_argument("--top-k", type=int, default=5,
                   help="labels per image, at most the model's label count (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="one JSON line per image instead of a table")
    p.add_argument("--annotate", type=Path, metavar="OUTDIR",
                   help="also write each image with its top label and score drawn on it")
    p.add_argument("--font", help="font file for annotations (default: $IMGCLF_FONT, else a system font "
                                  "with the label's glyphs)")
    p.add_argument("--batch-size", type=int, default=32, help="images per model call (default: %(default)s)")
    p.set_defaults(func=cmd_predict)


def top_k(probabilities, labels: list[str], k: int) -> list[dict]:
    """Return the ``k`` best ``{"label", "score"}`` of one probability vector, best first."""
    order = sorted(range(len(labels)), key=lambda i: (-float(probabilities[i]), i))[:k]
    return [{"label": labels[i], "score": float(probabilities[i])} for i in order]


def cmd_predict(args: argparse.Namespace) -> int:
    """Run `imgclf predict`."""
    from featurizer.errors import ImgclfError
    from service.annotate import annotate_to_jpeg, font_paths
    from training.repository import load_model, resolve

    if args.font:
        font_paths(args.font)  # a missing font file is an error before any work
    model = load_model(resolve(args.model))
    if args.top_k < 1:
        raise ValueError(f"--top-k must be at least 1; received {args.top_k}")
    k = min(args.top_k, len(model.labels))  # the default 5 on a 3-class model shows all 3
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1; received {args.batch_size}")
    failures: list[tuple[str, str]] = []
    done = 0
    for start in range(0, len(args.images), args.batch_size):
        chunk = args.images[start:start + args.batch_size]
        decoded = []
        for path in chunk:
            try:
                decoded.append((path, model.decode(path.read_bytes())))
            except OSError as exc:
                failures.append((str(path), f"cannot read file: {exc.strerror or exc}"))
            except ImgclfError as exc:
                failures.append((str(path), str(exc)))
        if not decoded:
            continue
        probabilities = model.predict_rgb([rgb for _, rgb in decoded])
        for (path, rgb), probs in zip(decoded, probabilities):
            best = top_k(probs, model.labels, k)
            if args.json:
                print(json.dumps({"path": str(path), "predictions": best}, ensure_ascii=False))
            else:
                print(f"{path}")
                for rank, item in enumerate(best, 1):
                    print(f"  {rank}. {item['label']:<30} {item['score']:.4f}")
            if args.annotate:
                args.annotate.mkdir(parents=True, exist_ok=True)
                out = args.annotate / f"{path.stem}.annotated.jpg"
                out.write_bytes(annotate_to_jpeg(rgb, best[0]["label"], best[0]["score"], args.font))
            done += 1
    for path, reason in failures:
        print(f"skipped {path}: {reason}") if not args.json else \
            print(json.dumps({"path": path, "error": reason}, ensure_ascii=False))
    log.info("predicted %d image(s) with %s version %s", done, model.name, model.version)
    return 0 if done else 1
