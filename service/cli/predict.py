"""`imgclf predict`: top-k labels for image files from an exported model or a running service, optionally annotated.

Each image's answer says too whether the model finds it unfamiliar (its ``unfamiliar_score``
above the threshold: the export's, moved by ``IMGCLF_UNFAMILIAR_TPR`` or ``--unfamiliar-threshold``
as the service moves it). The table shows rounded percentages; ``--json`` carries the float32 values.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path

import numpy as np

from imgclf.core import export_names as names
from imgclf.core.errors import ImgclfError, UsageError
from imgclf.core.paths import MODEL_REPOSITORY_HELP, model_repository
from imgclf.core.repository import resolve, validate_name
from imgclf.core.settings import read_setting
from imgclf.featurizer.images.decode import DEFAULT_MAX_PIXELS
from imgclf.service.cli.client import ImageRefused, PredictClient, predict_endpoint
from imgclf.service.dataplane.annotate import annotate_to_jpeg, font_paths
from imgclf.service.dataplane.postprocess import top_k
from imgclf.service.settings import ClientSettings, ServingSettings
from imgclf.training.serving_backend import SERVING_BACKENDS

log = logging.getLogger(__name__)

DEFAULT_TOP_K = 5
UNFAMILIAR_KEYS = ("unfamiliar", "unfamiliar_score", "unfamiliar_threshold")  # /predict's, and --json's
PATH_WIDTH = 48  # the table's image column, at most


def register(sub: argparse._SubParsersAction) -> None:
    """Add `imgclf predict`."""
    p = sub.add_parser("predict", help="predict the labels of image files with an exported model or a service",
                       description="Print the top-k labels of each IMAGE with a model from the repository "
                                   "(--model), or ask a running imgclf service (--url). A bad image is "
                                   "reported and skipped; the rest are predicted.")
    p.add_argument("images", type=Path, nargs="+", metavar="IMAGE")
    p.add_argument("--model", metavar="REPO/NAME[/VERSION] | NAME",
                   help="model version directory, or a model directory (newest version), or a NAME in the "
                        "model repository (--model-dir); with --url, the name of a model on the service "
                        "(default: the service's default model)")
    p.add_argument("--model-dir", type=Path, default=None, metavar="DIR",
                   help="where --model NAME is looked up: " + MODEL_REPOSITORY_HELP)
    p.add_argument("--url", metavar="http://HOST:PORT",
                   help="predict with a running service's POST /predict instead of a local model "
                        "(a service that needs API keys: set IMGCLF_API_KEY)")
    p.add_argument("--top-k", type=int, default=None,
                   help=f"labels per image, at most the model's label count (default: {DEFAULT_TOP_K}; "
                        "with --url, the service's default, IMGCLF_TOP_K)")
    p.add_argument("--json", action="store_true", help="one JSON line per image instead of a table (full float32 "
                                                        "probabilities, the unfamiliar flag, score and threshold)")
    p.add_argument("--unfamiliar-threshold", type=float, metavar="SCORE",
                   help="flag images whose unfamiliar score is above SCORE (default: the model's threshold, set at "
                        "a 95%% true-positive rate on its validation images, or at IMGCLF_UNFAMILIAR_TPR)")
    p.add_argument("--annotate", type=Path, metavar="OUTDIR",
                   help="also write each image with its top label and score drawn on it (with --url, the "
                        "service draws it)")
    p.add_argument("--font", help="font file for annotations (default: $IMGCLF_FONT, else a system font "
                                  "with the label's glyphs); not with --url, where the service's font is used")
    p.add_argument("--batch-size", type=int, default=32,
                   help="images per model call (default: %(default)s); not used with --url")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="refuse images with more pixels, checked before decoding (default: %(default)s)")
    p.add_argument("--backend", choices=SERVING_BACKENDS, default="card",
                   help="what runs the featurizer: card = the backend and precision the model card names, "
                        "tensorflow, openvino (the export's OpenVINO IR), auto (default: %(default)s); "
                        "not used with --url")
    p.add_argument("--allow-unsafe-ops", action="store_true",
                   help="load a model even if its SavedModel holds ops outside imgclf's inference allow-list "
                        "(file, process or network ops); a model is a program: only for models you trust "
                        "(default: $IMGCLF_ALLOW_UNSAFE_OPS, else no); not used with --url")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="with --url, seconds to wait for the service to connect or answer (default: %(default)s)")
    p.set_defaults(func=cmd_predict)


def cmd_predict(args: argparse.Namespace) -> int:
    """Run `imgclf predict`."""
    if args.top_k is not None and args.top_k < 1:
        raise UsageError(f"--top-k must be at least 1; received {args.top_k}")
    if args.unfamiliar_threshold is not None and not math.isfinite(args.unfamiliar_threshold):
        raise UsageError(f"--unfamiliar-threshold must be a finite number; received {args.unfamiliar_threshold}")
    if args.url:
        predict_endpoint(args.url)  # a malformed URL is a bad argument (exit 2)
        if not args.timeout > 0:
            raise UsageError(f"--timeout must be more than 0 seconds; received {args.timeout!r}")
        return predict_remote(args)
    if not args.model:
        raise UsageError("--model is required unless --url is given")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1; received {args.batch_size}")
    if args.max_pixels < 1:
        raise UsageError(f"--max-pixels must be at least 1; received {args.max_pixels}")
    return predict_local(args)


def model_path(model: str, model_dir: Path | None = None) -> Path:
    """Return the version directory ``--model`` names: a path, or a bare NAME in the model repository.

    A NAME without a slash that is no folder here is looked up in ``--model-dir`` (else
    ``$IMGCLF_MODEL_REPOSITORY``, else ./models), the same rule as every command's.

    Raises:
        ModelNotFound: naming what the repository holds.
    """
    if "/" not in model and not Path(model).expanduser().is_dir():
        return resolve(model_repository(model_dir) / model)
    return resolve(Path(model).expanduser())


def predict_local(args: argparse.Namespace) -> int:
    """Predict with a model from the repository; return the exit status."""
    if args.font:
        font_paths(args.font)  # a missing font file is an error before any work
    version_dir = model_path(args.model, args.model_dir)
    from imgclf.training.classifier import load_model  # TensorFlow: only when predicting locally, once checked

    model = load_model(version_dir, max_pixels=args.max_pixels,
                       allow_unsafe_ops=True if args.allow_unsafe_ops else None, backend=args.backend)
    requested = DEFAULT_TOP_K if args.top_k is None else args.top_k
    k = min(requested, len(model.labels))  # the default 5 on a 3-class model shows all 3
    threshold = _local_threshold(model, args.unfamiliar_threshold)
    width = _path_width(args.images)
    failures: list[tuple[str, str]] = []
    done = 0
    for start in range(0, len(args.images), args.batch_size):
        chunk = args.images[start:start + args.batch_size]
        decoded = []
        for path in chunk:
            try:
                decoded.append((path, model.decode(path.read_bytes())))
            except OSError as exc:
                failures.append((str(path), _read_error(exc)))
            except ImgclfError as exc:
                failures.append((str(path), str(exc)))
        if not decoded:
            continue
        # As the service predicts: the images signature (or the featurizer's backend, then the head).
        out = model.infer_inputs(np.stack([model.to_input(rgb) for _, rgb in decoded]))
        scores = out[names.UNFAMILIAR_SCORE_KEY]
        for (path, rgb), probs, score in zip(decoded, out[names.PROBABILITIES_KEY], scores):
            best = top_k(probs, model.labels, k)
            unfamiliar = {"unfamiliar": bool(float(score) > threshold), "unfamiliar_score": float(score),
                          "unfamiliar_threshold": threshold if math.isfinite(threshold) else None}
            print_prediction(path, best, args.json, unfamiliar, width)
            if args.annotate:
                _annotated_path(args.annotate, path).write_bytes(
                    annotate_to_jpeg(rgb, best[0]["label"], best[0]["score"], args.font,
                                     unfamiliar_of=len(model.labels) if unfamiliar["unfamiliar"] else None))
            done += 1
    print_failures(failures, args.json)
    log.info("predicted %d image(s) with %s version %s", done, model.name, model.version)
    return 0 if done else 1


def predict_remote(args: argparse.Namespace) -> int:
    """Predict with a running service's POST /predict; return the exit status.

    Raises:
        ServiceError: the service is down, too slow, or refuses every request (the run stops).
    """

    if args.font:
        raise UsageError("--font cannot be used with --url: the service draws annotations with its own font "
                         "(IMGCLF_FONT on the server)")
    if args.model:
        try:
            validate_name(args.model)
        except ValueError as exc:
            raise UsageError(f"with --url, --model names a model on the service, not a path; {exc}") from exc
    client = PredictClient(args.url, args.model, args.timeout,
                           api_key=ClientSettings.from_env().api_key)  # not an argument: ps shows those
    width = _path_width(args.images)
    failures: list[tuple[str, str]] = []
    done = 0
    try:
        for path in args.images:
            try:
                answer = client.predict(path.read_bytes(), args.top_k, annotate=bool(args.annotate),
                                        unfamiliar_threshold=args.unfamiliar_threshold)
            except OSError as exc:
                failures.append((str(path), _read_error(exc)))
                continue
            except ImageRefused as exc:
                failures.append((str(path), str(exc)))
                continue
            print_prediction(path, answer["predictions"], args.json,
                             {key: answer[key] for key in UNFAMILIAR_KEYS if key in answer}, width)
            if args.annotate:
                _annotated_path(args.annotate, path).write_bytes(answer["annotated_image"])
            done += 1
            log.info("%s: model %s version %s, %s ms", path, answer.get("model"), answer.get("version"),
                     answer.get("timing_ms", {}).get("total"))
    finally:  # a run stopped by a dead service still says which images it skipped
        client.close()
        print_failures(failures, args.json)
    log.info("predicted %d image(s) with %s", done, client.endpoint)
    return 0 if done else 1


def print_prediction(path: Path, best: list[dict], as_json: bool, unfamiliar: dict | None = None,
                     width: int = 0) -> None:
    """Print one image's top-k and unfamiliar flag, as a JSON line or a small table.

    The table's image line has a column that says "unfamiliar" (blank when familiar) and the score with the
    threshold; the labels' scores are percentages to one decimal.
    """
    unfamiliar = unfamiliar or {}
    if as_json:
        print(json.dumps({"path": str(path), "predictions": best, **unfamiliar}, ensure_ascii=False))
        return
    line = f"{path}"
    if "unfamiliar_score" in unfamiliar:
        threshold = unfamiliar.get("unfamiliar_threshold")
        line = (f"{line:<{width}}  {'unfamiliar' if unfamiliar.get('unfamiliar') else '':<10}  "
                f"score {unfamiliar['unfamiliar_score']:.3f}"
                + (f" (threshold {threshold:.3f})" if threshold is not None else " (no threshold)"))
    print(line)
    for rank, item in enumerate(best, 1):
        print(f"  {rank}. {item['label']:<30} {item['score'] * 100:5.1f}%")


def print_failures(failures: list[tuple[str, str]], as_json: bool) -> None:
    """Print the images that were skipped and why."""
    for path, reason in failures:
        if as_json:
            print(json.dumps({"path": path, "error": reason}, ensure_ascii=False))
        else:
            print(f"skipped {path}: {reason}")


def _local_threshold(model, given: float | None) -> float:
    """Return the unfamiliar threshold of a local model: ``given``, else as the service sets it
    (``IMGCLF_UNFAMILIAR_TPR``'s rate on the export's validation scores, else the export's own)."""
    if given is not None:
        return float(given)
    tpr = read_setting(ServingSettings, "unfamiliar_tpr")
    if tpr:
        try:
            return model.detector.threshold_at(tpr)
        except ValueError as exc:
            log.warning("IMGCLF_UNFAMILIAR_TPR=%g is not applied (%s): the export's threshold is used", tpr, exc)
    return float(model.detector.threshold)


def _path_width(paths: list[Path]) -> int:
    """Return the width of the table's image column."""
    return min(max((len(str(p)) for p in paths), default=0), PATH_WIDTH)


def _read_error(exc: OSError) -> str:
    return f"cannot read file: {exc.strerror or exc}"


def _annotated_path(outdir: Path, image: Path) -> Path:
    outdir.mkdir(parents=True, exist_ok=True)
    return outdir / f"{image.stem}.annotated.jpg"
