"""Benchmark: what the unfamiliar-input outputs cost a POST /predict, against the same request without them, in one run.

Trains a tiny model on the 2015-style test graph (seconds; the featurizer is so
small that the ratios are an upper bound of what a full Inception-v3 request
pays) and sends one photo through the Flask test client, in-process, in
interleaved rounds:

* ``baseline``: ``/predict`` as the page sends it without annotation (the flag
  and score come from the exported graph; the route adds three JSON fields);
* ``threshold``: the same with ``unfamiliar_threshold`` set (parsed, checked and
  the flag recomputed by the data plane);
* ``annotate`` and ``annotate+notice``: annotated, without and with the amber
  notice (the threshold put below or above the photo's score).

Prints the median milliseconds of each and its ratio to its baseline. Not a
test: no assertions.

    python -m bench.unfamiliar_request [--rounds 200]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("IMGCLF_PRECISION", "fp32")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def build(root: Path) -> tuple[Path, bytes]:
    """Train the tiny model into ``root``; return its repository and one of its photos."""
    from imgclf.featurizer.images.demo import write_demo_images
    from imgclf.featurizer.runtime.featurizer import FeaturizerConfig
    from imgclf.training.gate import GateConfig
    from imgclf.training.train_job import TrainJob, run_train
    from tests.support.legacy_graph import write_legacy_graph

    graph = write_legacy_graph(root / "legacy.pb")
    images = write_demo_images(root / "images", per_class=8)
    run_train(TrainJob(image_dir=images, featurizer=FeaturizerConfig(graph, precision="fp32"),
                       cache=root / "features.sqlite", model_dir=root / "models", name="shapes", progress=False,
                       gate=GateConfig(publish="always")))
    return root / "models", sorted(images.glob("sunsets/*.jpg"))[0].read_bytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    from imgclf.service import create_app

    with tempfile.TemporaryDirectory(prefix="bench-unfamiliar-") as tmp:
        repo, photo = build(Path(tmp))
        app = create_app({"model_repository": repo, "load_in_background": False, "batching": False})
        client = app.test_client()
        try:
            score = client.post("/predict", data=photo, content_type="image/jpeg").get_json()["unfamiliar_score"]
            cases = {"baseline": "", "threshold": f"unfamiliar_threshold={score + 1}",
                     "annotate": f"annotate=true&unfamiliar_threshold={score + 1}",
                     "annotate+notice": f"annotate=true&unfamiliar_threshold={score - 1}"}
            seconds: dict[str, list[float]] = {name: [] for name in cases}
            for _ in range(10):  # warm-up
                for query in cases.values():
                    client.post(f"/predict?{query}", data=photo, content_type="image/jpeg")
            order = list(cases)
            rng = random.Random(0)
            for _ in range(args.rounds):  # interleaved, shuffled: drift and the previous request hit every case alike
                rng.shuffle(order)
                for name in order:
                    query = cases[name]
                    started = time.perf_counter()
                    response = client.post(f"/predict?{query}", data=photo, content_type="image/jpeg")
                    seconds[name].append(time.perf_counter() - started)
                    assert response.status_code == 200, response.get_json()
        finally:
            app.extensions["imgclf.models"].close()
    median = {name: statistics.median(values) * 1000 for name, values in seconds.items()}
    print(f"POST /predict, one {len(photo)}-byte JPEG, {args.rounds} shuffled rounds, median ms:")
    for name, base in (("baseline", "baseline"), ("threshold", "baseline"), ("annotate", "annotate"),
                       ("annotate+notice", "annotate")):
        print(f"  {name:<16} {median[name]:8.2f} ms   x{median[name] / median[base]:.3f} of {base}")


if __name__ == "__main__":
    main()
