"""Benchmark: the figures of trust, through the real `imgclf train` and the exported model, in one run.

On digit photos (:mod:`imgclf.featurizer.images.digits`, 10 classes): a folder of
``--train-per-class`` photos of each digit is trained on by :func:`run_train`
(its own 80/10/10 split, temperature calibration, the unfamiliar-input detector,
the publish gate), then the exported version is loaded as the service loads it
and asked about ``--unseen-per-class`` photos of each digit it never saw, and
``--per-set`` pictures of each unfamiliar set. Prints:

* calibration: ECE (15 bins) and NLL before and after, on the validation and test
  splits (from the card) and on the unseen photos (the export's calibrated
  probabilities p, and the uncalibrated ones recovered exactly as softmax(T·log p));
* the unfamiliar rate at the export's threshold on unseen digits (target ≤ 0.1),
  on noise, flat colours, textures and photo-like pictures (the demo set's
  sunsets, stripes, checkers, bubbles; target ≥ 0.9), with the card's AUROC;
* the flag's share of request time: the head graph with and without the detector
  on the same bottlenecks, beside decoding plus the featurizer per image, all
  timed in this run;
* the publish gate: a normal retrain (published), the same photos with shuffled
  labels (rejected, exit 3), and a diverged run (learning rate 1e30: exit 1,
  nothing written).

The graph is the tiny 2015-interface one by default (fast); ``--full`` uses the
full-size Inception-v3 with seeded random weights (minutes). Neither is trained
on ImageNet (nothing can be downloaded here): the figures show the machinery on
these features. Not a test: no assertions.

    python -m bench.trust [--train-per-class 60] [--unseen-per-class 40] [--per-set 40] [--full]
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from imgclf.core import export_names as names
from imgclf.core.errors import CandidateRejected, TrainingDiverged
from imgclf.featurizer.images.demo import DEMO_CLASSES, make_demo_image
from imgclf.featurizer.images.digits import render_digit_photo
from imgclf.featurizer.images.unfamiliar import unfamiliar_pictures
from imgclf.featurizer.runtime.featurizer import FeaturizerConfig
from imgclf.training.calibration import ece, nll
from imgclf.training.config import TrainConfig
from imgclf.training.gate import GateConfig
from imgclf.training.train_job import TrainJob, run_train

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"


def jpeg(image) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def write_digits(folder: Path, per_class: int, seed: int) -> Path:
    """Write ``per_class`` digit photos of each digit under ``folder/<digit name>/``."""
    rng = np.random.default_rng(seed)
    for digit in range(10):
        (folder / f"d{digit}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            (folder / f"d{digit}" / f"{i:04d}.jpg").write_bytes(jpeg(render_digit_photo(digit, rng)))
    return folder


def unseen_digits(per_class: int, seed: int) -> tuple[list[bytes], np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10), per_class)
    return [jpeg(render_digit_photo(int(d), rng)) for d in labels], labels


def photos(count: int, seed: int) -> list[bytes]:
    """Photo-like pictures of none of the digits: the demo set's four kinds, in turn."""
    rng = np.random.default_rng(seed)
    return [jpeg(make_demo_image(DEMO_CLASSES[i % len(DEMO_CLASSES)], rng)) for i in range(count)]


def answers(model, pictures: list[bytes]) -> dict[str, np.ndarray]:
    """Return the export's calibrated probabilities and unfamiliar scores for encoded pictures."""
    outs = [model.infer_inputs(np.stack([model.preprocess(p)[1] for p in pictures[s:s + 32]]))
            for s in range(0, len(pictures), 32)]
    return {key: np.concatenate([o[key] for o in outs]) for key in outs[0]}


def uncalibrated(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """Return softmax(T·log p): the head's own softmax, recovered exactly from calibrated p = softmax(z/T)."""
    with np.errstate(divide="ignore"):
        z = temperature * np.log(np.asarray(probabilities, np.float64))
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def timed(function, repeats: int) -> float:
    """Return the median seconds of ``function()`` over ``repeats`` runs (after one warm-up)."""
    function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def flag_share(model, pictures: list[bytes], repeats: int) -> dict:
    """Time decode + featurizer + head per image, and the head with and without the detector."""
    import tensorflow as tf

    from imgclf.training.frozen_graphs import graph_function

    batch = pictures[:32]
    inputs = np.stack([model.preprocess(p)[1] for p in batch])
    decode = timed(lambda: [model.preprocess(p) for p in batch], repeats) / len(batch)
    served = timed(lambda: model.infer_inputs(inputs), repeats) / len(batch)
    # The exported head graph with every output, and pruned to the probabilities alone (no detector ops),
    # on the same bottlenecks.
    head_def = _graph_def(model.path / names.HEAD_GRAPH_FILE)
    with_flag = graph_function(head_def, names.HEAD_INPUT, list(names.HEAD_OUTPUTS))
    plain = graph_function(head_def, names.HEAD_INPUT, [names.HEAD_OUTPUT])
    vectors = tf.constant(np.random.default_rng(0).normal(size=(len(batch), model.bottleneck_dim)).astype(np.float32))
    head_flag = timed(lambda: with_flag(vectors), repeats) / len(batch)
    head_plain = timed(lambda: plain(vectors), repeats) / len(batch)
    request = decode + served
    return {"decode_ms": 1e3 * decode, "featurizer_and_head_ms": 1e3 * served, "head_with_flag_ms": 1e3 * head_flag,
            "head_without_flag_ms": 1e3 * head_plain,
            "flag_share_of_request": max(head_flag - head_plain, 0.0) / request}


def _graph_def(path: Path):
    from tensorflow.core.framework import graph_pb2

    graph_def = graph_pb2.GraphDef()
    graph_def.ParseFromString(path.read_bytes())
    return graph_def


def gate_runs(images: Path, shuffled: Path, graph: Path, cache: Path, repo: Path) -> list[dict]:
    """Run the gate's three cases on the trained model's repository; return one row each."""
    rows = []

    def job(folder, name, **train):
        return TrainJob(image_dir=folder, featurizer=FeaturizerConfig(graph, precision="fp32"), cache=cache,
                        model_dir=repo, name=name, progress=False, train=TrainConfig(**train))

    for case, folder, train in (("normal retrain", images, {}), ("shuffled labels", shuffled, {}),
                                ("diverged (lr 1e30)", images, {"learning_rate": 1e30})):
        before = sorted(p.name for p in (repo / "digits").iterdir())
        try:
            outcome = run_train(job(folder, "digits", **train))
            rows.append({"case": case, "result": f"published version {outcome.version_dir.name}", "exit": 0})
        except CandidateRejected as rejected:
            rows.append({"case": case, "result": f"rejected: {rejected}", "exit": 3})
        except TrainingDiverged as diverged:
            after = sorted(p.name for p in (repo / "digits").iterdir())
            rows.append({"case": case, "result": f"diverged: {diverged}; wrote nothing: {after == before}", "exit": 1})
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-per-class", type=int, default=60, help="digit photos per class in the training "
                        "folder (split 80/10/10 by imgclf train; default 60: 600 photos)")
    parser.add_argument("--unseen-per-class", type=int, default=40, help="unseen photos per digit (default 40)")
    parser.add_argument("--per-set", type=int, default=40, help="pictures per unfamiliar set (default 40)")
    parser.add_argument("--repeats", type=int, default=5, help="timing repeats (median; default 5)")
    parser.add_argument("--full", action="store_true",
                        help="the full-size Inception-v3 (minutes) instead of the tiny graph")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name, low, high in (("train_per_class", 10, 500), ("unseen_per_class", 5, 500), ("per_set", 8, 500),
                            ("repeats", 1, 50)):
        if not low <= getattr(args, name) <= high:
            parser.error(f"--{name.replace('_', '-')} must be in [{low}, {high}]")
    return args


def main(argv=None) -> None:
    from imgclf.training.classifier import load_model

    args = parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    if args.full:
        graph = OUT / "inception_v3_random_seed0.pb"
        if not graph.exists():
            from imgclf.featurizer.graph.export import export_inception

            export_inception(graph, weights="random", seed=0)
    else:
        from tests.support.legacy_graph import write_legacy_graph  # the benchmarks' tiny graph, as bench.budget's

        graph = write_legacy_graph(OUT / "trust_legacy_graph.pb")
    work = Path(tempfile.mkdtemp(prefix="imgclf-trust-"))
    try:
        images = write_digits(work / "digits", args.train_per_class, args.seed)
        shuffled = work / "shuffled"
        files = sorted(images.glob("*/*.jpg"))
        for path, label in zip(files, np.random.default_rng(7).permutation([p.parent.name for p in files])):
            (shuffled / label).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, shuffled / label / path.name)
        repo, cache = work / "models", work / "features.sqlite"
        started = time.perf_counter()
        outcome = run_train(TrainJob(image_dir=images, featurizer=FeaturizerConfig(graph, precision="fp32"),
                                     cache=cache, model_dir=repo, name="digits", progress=False,
                                     gate=GateConfig(publish="always")))
        train_seconds = time.perf_counter() - started
        model = load_model(outcome.version_dir)
        pictures, labels = unseen_digits(args.unseen_per_class, args.seed + 1)
        unseen = answers(model, pictures)
        p_after = unseen[names.PROBABILITIES_KEY].astype(np.float64)
        p_before = uncalibrated(p_after, model.temperature)
        calibration = dict(outcome.calibration)
        calibration["unseen"] = {"examples": len(labels), "accuracy": float((p_after.argmax(1) == labels).mean()),
                                 "ece_before": ece(p_before, labels), "ece_after": ece(p_after, labels),
                                 "nll_before": nll(np.log(np.maximum(p_before, 1e-300)), labels),
                                 "nll_after": nll(np.log(np.maximum(p_after, 1e-300)), labels)}
        sets = {"unseen digits": pictures, **{kind: unfamiliar_pictures(kind, args.per_set, args.seed + 2)
                                              for kind in ("noise", "flat", "textures")},
                "photos (demo kinds)": photos(args.per_set, args.seed + 3)}
        rates = {name: float(answers(model, data)[names.UNFAMILIAR_SCORE_KEY].__gt__(
            np.float32(model.detector.threshold)).mean()) for name, data in sets.items()}
        cost = flag_share(model, pictures, args.repeats)
        gate = gate_runs(images, shuffled, graph, cache, repo)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"machine": platform.processor() or platform.machine(), "graph": "full" if args.full else "tiny",
              "train_seconds": train_seconds, "calibration": calibration, "unfamiliar_rates": rates,
              "card_unfamiliar": outcome.unfamiliar, "cost": cost, "gate": gate}
    print_report(result)
    (OUT / f"trust-{result['graph']}.json").write_text(json.dumps(result, indent=2))


def print_report(result: dict) -> None:
    c = result["calibration"]
    print(f"graph: {result['graph']}; training took {result['train_seconds']:.1f} s; temperature {c['temperature']:.4g}"
          + (f" ({c['note']})" if c.get("note") else ""))
    print(f"{'split':<10} {'images':>6}  {'ECE before':>10}  {'ECE after':>9}  {'NLL before':>10}  {'NLL after':>9}")
    for split in ("validation", "test", "unseen"):
        f = c[split]
        print(f"{split:<10} {f['examples']:>6}  {f['ece_before'] or 0:>10.4f}  {f['ece_after'] or 0:>9.4f}  "
              f"{f['nll_before'] or 0:>10.4f}  {f['nll_after'] or 0:>9.4f}")
    print(f"unseen accuracy {c['unseen']['accuracy']:.3f}")
    print(f"\nunfamiliar rate at the export's threshold ({result['card_unfamiliar']['threshold']:.4g}):")
    for name, rate in result["unfamiliar_rates"].items():
        print(f"  {name:<22} {rate:.3f}")
    card_sets = result["card_unfamiliar"]["sets"]
    print("card: " + ", ".join(f"{k} AUROC {v['auroc']}" for k, v in card_sets.items()) + "; left out: "
          + ", ".join(f"{k} AUROC {v['auroc']}" for k, v in result["card_unfamiliar"]["left_out_classes"].items()))
    cost = result["cost"]
    print(f"\nper image: decode {cost['decode_ms']:.2f} ms, featurizer + head {cost['featurizer_and_head_ms']:.2f} ms; "
          f"head with the flag {cost['head_with_flag_ms']:.3f} ms, without {cost['head_without_flag_ms']:.3f} ms: "
          f"the flag is {100 * cost['flag_share_of_request']:.2f}% of request time")
    print("\npublish gate:")
    for row in result["gate"]:
        print(f"  {row['case']:<20} exit {row['exit']}: {row['result'][:150]}")


if __name__ == "__main__":
    main()
