"""Benchmark: unfamiliar-input detectors on frozen bottlenecks, side by side, on two graphs, in one run.

In distribution: digit photos (:mod:`imgclf.featurizer.images.digits`, 96–160 px
RGB JPEGs) of the digits 0–7: ``--train-per-class`` of each to train (split 80/20
seeded into train and validation) and ``--unseen-per-class`` never seen. Unfamiliar
sets, ``--per-set`` images each: noise (uniform and Gaussian pixels), flat colours,
textures and photo-like pictures (the demo generators — stripes, checkers,
bubbles, sunsets — and smooth random blobs), and the left-out digits 8 and 9.

Each set is featurized by imgclf's own Featurizer on the tiny 2015-interface graph
and on the full-size Inception-v3 (``--no-full`` leaves it out); bottlenecks are
cached in bench/out/unfamiliar-features.sqlite, so a second run is fast. The head
is trained as ``imgclf train`` trains it (:func:`imgclf.training.fit_head.train_head`,
default settings). For each detector of :mod:`imgclf.training.unfamiliar`:
AUROC and FPR at 95% TPR (unseen digits against each unfamiliar set and all of
them), the threshold set at 95% TPR on validation and the unfamiliar rate it gives
on every set, the scoring time per image (numpy float32, batch 1 and 32) beside the
featurizer's own per-image time measured in the same run (the share of request
time), and the bytes an export would store. A last table refits the head and the
detectors on fewer training images per class.

Both graphs have seeded random weights (nothing can be downloaded here): the
figures show how each method behaves on these features, not on ImageNet-trained
ones. Not a test: no assertions. Prints tables; writes bench/out/unfamiliar.json.

    python -m bench.unfamiliar [--train-per-class 75] [--unseen-per-class 50] [--per-set 120] [--no-full]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from imgclf.featurizer.images.demo import DEMO_CLASSES, make_demo_image
from imgclf.featurizer.images.digits import render_digit_photo
from imgclf.featurizer.runtime.featurizer import Featurizer, FeaturizerConfig
from imgclf.featurizer.store.cache import FeatureCache
from imgclf.featurizer.store.identity import sha256_bytes
from imgclf.training import unfamiliar as ood

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
FAMILIAR_DIGITS = tuple(range(8))
LEFT_OUT_DIGITS = (8, 9)
UNFAMILIAR_SETS = ("noise", "flat", "textures", "left_out")
KNN_K = (1, 5, 10, 20, 50)
TPR = ood.DEFAULT_TPR
LIMITS = {"train_per_class": (10, 500), "unseen_per_class": (5, 500), "per_set": (10, 1000)}


def jpeg(image: Image.Image) -> bytes:
    """Encode an RGB picture as a quality-90 JPEG."""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def digit_set(digits, per_class: int, seed: int) -> tuple[list[bytes], np.ndarray]:
    """Return ``per_class`` photos of each digit (class-sorted) and their digits."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.asarray(digits), per_class)
    return [jpeg(render_digit_photo(int(d), rng)) for d in labels], labels


def noise_image(rng: np.random.Generator, i: int) -> Image.Image:
    """Uniform pixels for even ``i``, Gaussian (mean 128, std 20-80) for odd, 96-320 px."""
    w, h = (int(v) for v in rng.integers(96, 321, 2))
    if i % 2 == 0:
        pixels = rng.integers(0, 256, (h, w, 3))
    else:
        pixels = np.clip(rng.normal(128, rng.uniform(20, 80), (h, w, 3)), 0, 255)
    return Image.fromarray(pixels.astype(np.uint8))


def flat_image(rng: np.random.Generator, i: int) -> Image.Image:
    """One random colour everywhere (every fifth a grey), 96-320 px."""
    w, h = (int(v) for v in rng.integers(96, 321, 2))
    colour = tuple(int(v) for v in (rng.integers(0, 256, 1).repeat(3) if i % 5 == 0 else rng.integers(0, 256, 3)))
    return Image.new("RGB", (w, h), colour)


def texture_image(rng: np.random.Generator, i: int) -> Image.Image:
    """The four demo classes in turn, and every fifth a smooth photo-like blob picture."""
    if i % 5 == 4:
        coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
        picture = np.asarray(coarse.resize((320, 240), Image.BICUBIC), dtype=float)
        return Image.fromarray(np.clip(picture + rng.normal(0, 6, picture.shape), 0, 255).astype(np.uint8))
    return make_demo_image(DEMO_CLASSES[i % 5], rng)


def image_sets(args) -> tuple[dict[str, list[bytes]], dict[str, np.ndarray]]:
    """Return every set's JPEGs and the digits' labels (train, unseen, left_out)."""
    images, labels = {}, {}
    images["train"], labels["train"] = digit_set(FAMILIAR_DIGITS, args.train_per_class, args.seed)
    images["unseen"], labels["unseen"] = digit_set(FAMILIAR_DIGITS, args.unseen_per_class, args.seed + 1)
    per_digit = -(-args.per_set // len(LEFT_OUT_DIGITS))
    images["left_out"], labels["left_out"] = digit_set(LEFT_OUT_DIGITS, per_digit, args.seed + 2)
    for offset, (name, draw) in enumerate((("noise", noise_image), ("flat", flat_image),
                                           ("textures", texture_image)), start=3):
        rng = np.random.default_rng(args.seed + offset)
        images[name] = [jpeg(draw(rng, i)) for i in range(args.per_set)]
    return images, labels


def featurize(featurizer: Featurizer, images: dict[str, list[bytes]], batch_size: int) -> dict[str, np.ndarray]:
    """Return every set's bottlenecks [N, D], computing (and caching) only the ones not cached yet."""
    features = {}
    with FeatureCache(OUT / "unfamiliar-features.sqlite") as cache:
        cache.register_featurizer(featurizer.fingerprint, featurizer.describe())
        for name, jpegs in images.items():
            keys = [sha256_bytes(data) for data in jpegs]
            found = cache.get_many(featurizer.fingerprint, keys)
            missing = [i for i, key in enumerate(keys) if key not in found]
            started = time.perf_counter()
            for s in range(0, len(missing), batch_size):
                chunk = missing[s:s + batch_size]
                vectors = featurizer.features([jpegs[i] for i in chunk])
                bad = [v for v in vectors if not isinstance(v, np.ndarray)]
                if bad:
                    raise RuntimeError(f"the featurizer refused a generated image: {bad[0]}")
                cache.put_many(featurizer.fingerprint, {keys[i]: v for i, v in zip(chunk, vectors)})
                found.update({keys[i]: v for i, v in zip(chunk, vectors)})
            if missing:
                print(f"  featurized {len(missing)} {name} images in {time.perf_counter() - started:.1f} s",
                      flush=True)
            features[name] = np.stack([found[key] for key in keys]).astype(np.float32)
    return features


def per_image_seconds(call, batch: int, budget: float = 0.5, least: int = 3) -> float:
    """Return the median seconds per image of ``call()`` (one batch of ``batch``), over ~``budget`` seconds."""
    call()  # warm-up
    times, started = [], time.perf_counter()
    while len(times) < least or time.perf_counter() - started < budget:
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return float(np.median(times)) / batch


def featurizer_seconds(featurizer: Featurizer, jpegs: list[bytes], batch_size: int) -> dict:
    """Return the featurizer's seconds per image (decode to bottleneck) at batch 1 and ``batch_size``."""
    one = per_image_seconds(lambda: featurizer.features(jpegs[:1]), 1, budget=2.0)
    many = per_image_seconds(lambda: featurizer.features(jpegs[:batch_size]), batch_size, budget=2.0, least=2)
    return {"batch_1": one, f"batch_{batch_size}": many}


def seeded_split(labels: np.ndarray, seed: int, validation: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Return train and validation row indices: ``validation`` of each class, chosen by a seeded shuffle."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        cut = max(1, round(validation * len(rows)))
        val.extend(rows[:cut])
        train.extend(rows[cut:])
    return np.sort(train), np.sort(val)


@dataclass
class Head:
    """A trained head as numpy: logits = x·weight + bias (its standardisation folded in)."""

    weight: np.ndarray  # float64 [D, classes]
    bias: np.ndarray  # float64 [classes]
    val_accuracy: float
    unseen_accuracy: float
    fold_error: float  # largest |logits| difference between the folded map and the Keras head

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Return the head's logits for bottlenecks ``x``, float32."""
        return (x.astype(np.float64) @ self.weight + self.bias).astype(np.float32)


def train(x_train, y_train, x_val, y_val, x_unseen, y_unseen, seed: int) -> Head:
    """Train the head as ``imgclf train`` does (default head and loop settings) and fold it into numpy."""
    from imgclf.training.config import TrainConfig
    from imgclf.training.fit_head import train_head
    from imgclf.training.head import LOGITS_LAYER, logits_model
    from imgclf.training.loop import predict

    result = train_head(x_train, y_train, x_val, y_val, len(FAMILIAR_DIGITS),
                        train_config=TrainConfig(seed=seed), progress=False)
    model = result.model
    standardize = model.get_layer("standardize")
    mean, variance = (np.asarray(v, np.float64).reshape(-1) for v in (standardize.mean, standardize.variance))
    kernel, bias = (np.asarray(v, np.float64) for v in model.get_layer(LOGITS_LAYER).get_weights())
    std = np.maximum(np.sqrt(variance), 1e-7)  # keras.layers.Normalization divides by max(sqrt(var), epsilon)
    weight = kernel / std.reshape(-1, 1)
    head = Head(weight, bias - (mean / std) @ kernel, 0.0, 0.0, 0.0)
    keras_logits = predict(logits_model(model), x_unseen)
    head.fold_error = float(np.abs(keras_logits - head.logits(x_unseen)).max())
    head.val_accuracy = float((head.logits(x_val).argmax(1) == y_val).mean())
    head.unseen_accuracy = float((head.logits(x_unseen).argmax(1) == y_unseen).mean())
    return head


def detectors(x_train, y_train, head: Head, vim_dim: int) -> dict:
    """Return every candidate, fitted on the training split: name → (detector, seconds to fit)."""
    made = {}

    def add(name, fit):
        started = time.perf_counter()
        made[name] = (fit(), time.perf_counter() - started)

    add("msp", ood.MaxSoftmax)
    add("energy", ood.Energy)
    add("mahalanobis (Ledoit-Wolf)", lambda: ood.fit_mahalanobis(x_train, y_train))
    add("mahalanobis (ridge 0.5)", lambda: ood.fit_mahalanobis(x_train, y_train, 0.5))
    for k in KNN_K:
        if k <= len(x_train):
            add(f"knn k={k}", lambda k=k: ood.fit_knn(x_train, k))
    dim = min(vim_dim, len(x_train) // 2)
    add(f"vim dim={dim}", lambda: ood.fit_vim(x_train, head.weight, head.bias, dim))
    return made


def evaluate(detector, features: dict, logits: dict, val_name: str = "val") -> dict:
    """Return the detector's threshold, unfamiliar rates per set, AUROC and FPR@95%TPR against unseen digits."""
    scores = {name: detector.score(features[name], logits[name]) for name in features}
    threshold = ood.threshold_at_tpr(scores[val_name], TPR)
    rates = {name: float(ood.is_unfamiliar(s, threshold).mean()) for name, s in scores.items()}
    everything = np.concatenate([scores[name] for name in UNFAMILIAR_SETS])
    measures = {name: {"auroc": ood.auroc(scores["unseen"], scores[name]),
                       "fpr95": ood.fpr_at_tpr(scores["unseen"], scores[name], TPR)} for name in UNFAMILIAR_SETS}
    measures["all"] = {"auroc": ood.auroc(scores["unseen"], everything),
                       "fpr95": ood.fpr_at_tpr(scores["unseen"], everything, TPR)}
    return {"threshold": threshold, "rates": rates, "measures": measures}


def scoring_seconds(detector, features: np.ndarray, logits: np.ndarray, batch_size: int) -> dict:
    """Return the detector's seconds per image, numpy float32 on one BLAS thread, at batch 1 and ``batch_size``.

    One thread: a server scores beside the featurizer, whose threads hold the cores; and on a shared
    machine, a two-thread BLAS call on a tiny matrix waits for a busy core far longer than it computes.
    """
    from threadpoolctl import threadpool_limits  # installed with scikit-learn (the test extra)

    x, z = features[:batch_size].astype(np.float32), logits[:batch_size].astype(np.float32)
    with threadpool_limits(1):
        return {"batch_1": per_image_seconds(lambda: detector.score(x[:1], z[:1]), 1, budget=0.5, least=20),
                f"batch_{batch_size}": per_image_seconds(lambda: detector.score(x, z), len(x), budget=0.5,
                                                         least=10)}


def few_images(features: dict, labels: dict, per_class_counts, seed: int, vim_dim: int) -> dict:
    """Refit head and detectors on ``n`` training images per class (same validation); return the key figures."""
    rows = {}
    for n in per_class_counts:
        keep = np.concatenate([np.flatnonzero(labels["train"] == c)[:n] for c in FAMILIAR_DIGITS])
        x, y = features["train"][keep], labels["train"][keep]
        head = train(x, y, features["val"], labels["val"], features["unseen"], labels["unseen"], seed)
        logits = {name: head.logits(f) for name, f in features.items()}
        rows[n] = {"unseen_accuracy": head.unseen_accuracy, "detectors": {}}
        for name, (detector, _) in detectors(x, y, head, vim_dim).items():
            result = evaluate(detector, features, logits)
            rows[n]["detectors"][name] = {"auroc_all": result["measures"]["all"]["auroc"],
                                          "fpr95_all": result["measures"]["all"]["fpr95"],
                                          "rates": result["rates"]}
    return rows


def run_graph(label: str, graph: Path, images: dict, labels: dict, args) -> dict:
    """Featurize every set with ``graph``, train the head, and measure every detector; return the results."""
    print(f"\n== {label}: {graph.name} ==", flush=True)
    started = time.perf_counter()
    with Featurizer(FeaturizerConfig(graph)) as featurizer:
        described = featurizer.describe()
        features = featurize(featurizer, images, args.batch_size)
        featurizer_cost = featurizer_seconds(featurizer, images["unseen"], args.batch_size)
    train_rows, val_rows = seeded_split(labels["train"], args.seed)
    features["val"], features["train"] = features["train"][val_rows], features["train"][train_rows]
    digits = {"train": labels["train"][train_rows], "val": labels["train"][val_rows], "unseen": labels["unseen"]}
    head = train(features["train"], digits["train"], features["val"], digits["val"], features["unseen"],
                 digits["unseen"], args.seed)
    print(f"  head: validation accuracy {head.val_accuracy:.3f}, unseen {head.unseen_accuracy:.3f} "
          f"(folded logits within {head.fold_error:.1e} of Keras')", flush=True)
    logits = {name: head.logits(f) for name, f in features.items()}
    results = {}
    for name, (detector, fit_seconds) in detectors(features["train"], digits["train"], head, args.vim_dim).items():
        results[name] = evaluate(detector, features, logits)
        results[name].update(fit_seconds=fit_seconds, nbytes=detector.nbytes,
                             seconds=scoring_seconds(detector, features["unseen"], logits["unseen"],
                                                     args.batch_size))
    few = few_images(features, digits, args.few, args.seed, args.vim_dim) if args.few else {}
    if few:  # the whole training split as the last column
        few[int(np.bincount(digits["train"]).min())] = {
            "unseen_accuracy": head.unseen_accuracy,
            "detectors": {name: {"auroc_all": r["measures"]["all"]["auroc"], "fpr95_all": r["measures"]["all"]["fpr95"],
                                 "rates": r["rates"]} for name, r in results.items()}}
    return {"graph": graph.name, "featurizer": described, "sizes": {k: len(v) for k, v in features.items()},
            "head": {"val_accuracy": head.val_accuracy, "unseen_accuracy": head.unseen_accuracy,
                     "fold_error": head.fold_error},
            "featurizer_seconds": featurizer_cost, "detectors": results, "few_images": few,
            "seconds": time.perf_counter() - started}


def report(label: str, run: dict, batch_size: int) -> None:
    """Print a graph's tables: quality, rates at the validation threshold, cost and storage, few images."""
    feat = run["featurizer_seconds"]
    print(f"\n{label} ({run['graph']}, {run['featurizer'].get('precision', '?')}): featurizer "
          f"{feat['batch_1'] * 1e3:.1f} ms/image at batch 1, {feat[f'batch_{batch_size}'] * 1e3:.1f} ms/image "
          f"at batch {batch_size}; head accuracy on unseen digits {run['head']['unseen_accuracy']:.3f}")
    print("AUROC / FPR@95%TPR, unseen digits against each set (threshold from the unseen digits themselves):")
    print(f"{'detector':28}" + "".join(f"{s:>15}" for s in (*UNFAMILIAR_SETS, "all")))
    for name, r in run["detectors"].items():
        print(f"{name:28}" + "".join(f"{r['measures'][s]['auroc']:>8.3f} {r['measures'][s]['fpr95']:>5.2f} "
                                     for s in (*UNFAMILIAR_SETS, "all")))
    print(f"Unfamiliar rate at the validation threshold ({TPR:.0%} TPR on validation); targets: noise and "
          f"textures >= 0.9, unseen <= 0.1:")
    sets = ("val", "unseen", *UNFAMILIAR_SETS)
    print(f"{'detector':28}" + "".join(f"{s:>10}" for s in sets))
    for name, r in run["detectors"].items():
        print(f"{name:28}" + "".join(f"{r['rates'][s]:>10.3f}" for s in sets))
    print("Cost: scoring µs/image (numpy float32) and its share of the featurizer's time at the same batch; "
          "fit seconds; export bytes:")
    print(f"{'detector':28}{'b=1 µs':>10}{'share':>9}{f'b={batch_size} µs':>10}{'share':>9}{'fit s':>8}{'bytes':>12}")
    for name, r in run["detectors"].items():
        one, many = r["seconds"]["batch_1"], r["seconds"][f"batch_{batch_size}"]
        print(f"{name:28}{one * 1e6:>10.1f}{one / feat['batch_1']:>9.2%}{many * 1e6:>10.1f}"
              f"{many / feat[f'batch_{batch_size}']:>9.2%}{r['fit_seconds']:>8.2f}{r['nbytes']:>12,}")
    if run["few_images"]:
        counts = list(run["few_images"])
        print("Few training images per class: AUROC (all sets) / unfamiliar rate on unseen digits, per count "
              "(ViM keeps min(--vim-dim, half the training rows) dimensions):")
        print(f"{'detector':28}" + "".join(f"{f'n={n}':>16}" for n in counts))
        print(f"{'(head accuracy, unseen)':28}" + "".join(
            f"{run['few_images'][n]['unseen_accuracy']:>16.3f}" for n in counts))
        for name in run["few_images"][counts[-1]]["detectors"]:
            cells = []
            for n in counts:
                d = run["few_images"][n]["detectors"]
                key = next((k for k in d if k.split(" dim=")[0] == name.split(" dim=")[0]), None)
                cells.append(f"{d[key]['auroc_all']:>9.3f} {d[key]['rates']['unseen']:>5.2f} " if key else f"{'-':>16}")
            print(f"{name.split(' dim=')[0]:28}" + "".join(cells))


def parse_args(argv=None) -> argparse.Namespace:
    """Read and check the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-per-class", type=int, default=75,
                        help="digit photos per familiar class (0-7) to train on, split 80/20 into train and "
                             "validation (default 75: 600 in all)")
    parser.add_argument("--unseen-per-class", type=int, default=50, help="unseen digit photos per class (default 50)")
    parser.add_argument("--per-set", type=int, default=120, help="images per unfamiliar set (default 120)")
    parser.add_argument("--batch-size", type=int, default=32, help="featurizer and scoring batch (default 32)")
    parser.add_argument("--vim-dim", type=int, default=1000,
                        help="ViM principal dimensions, at most half the training images (default 1000)")
    parser.add_argument("--few", type=int, nargs="*", default=[5, 10, 20],
                        help="also refit on this many training images per class (default 5 10 20; none: skip)")
    parser.add_argument("--graph", type=Path, default=OUT / "inception_v3_random_seed0.pb",
                        help="the full-size graph (built once with export_inception if missing)")
    parser.add_argument("--no-full", action="store_true", help="only the tiny graph (the full one takes minutes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=OUT / "unfamiliar.json", help="where the results go")
    args = parser.parse_args(argv)
    for name, (low, high) in LIMITS.items():
        if not low <= getattr(args, name) <= high:
            parser.error(f"--{name.replace('_', '-')} must be from {low} to {high}; received {getattr(args, name)}")
    if not 1 <= args.batch_size <= 256 or args.vim_dim < 1:
        parser.error(f"--batch-size must be 1-256 and --vim-dim >= 1; received {args.batch_size}, {args.vim_dim}")
    args.few = sorted(n for n in set(args.few) if n < round(0.8 * args.train_per_class))
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    from tests.support.legacy_graph import write_legacy_graph  # the benchmarks' tiny graph, as bench.budget's

    tiny = OUT / "unfamiliar_legacy_graph.pb"
    if not tiny.exists():  # written once: its bytes (so its fingerprint, the cache's key) vary between writes
        write_legacy_graph(tiny)
    graphs = {"tiny legacy graph": tiny}
    if not args.no_full:
        if not args.graph.exists():
            from imgclf.featurizer.graph.export import export_inception

            print(f"building {args.graph} (once) ...", flush=True)
            export_inception(args.graph, weights="random", seed=0)
        graphs["full Inception-v3"] = args.graph
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores", flush=True)
    started = time.perf_counter()
    images, labels = image_sets(args)
    print(f"generated {sum(map(len, images.values()))} JPEGs in {time.perf_counter() - started:.1f} s: "
          + ", ".join(f"{name} {len(v)}" for name, v in images.items()), flush=True)
    runs = {label: run_graph(label, graph, images, labels, args) for label, graph in graphs.items()}
    print("\nAll graphs have seeded random weights: the figures show each method on these features, "
          f"not on ImageNet-trained ones. Load average at the end: {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores (timings on a busy machine are noisy; compare within a run).")
    for label, run in runs.items():
        report(label, run, args.batch_size)
    args.json.write_text(json.dumps({"settings": {k: str(v) if isinstance(v, Path) else v
                                                  for k, v in vars(args).items()},
                                     "cpu": platform.processor() or platform.machine(), "runs": runs}, indent=1))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
