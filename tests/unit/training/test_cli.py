"""`imgclf train`'s command line, in process: the featurizer a feature dataset implies, int8's backend, bad input.

Every refusal here is one `imgclf train: error:` line with exit status 2, given before any graph is loaded,
and writes nothing.
"""

import hashlib

import numpy as np
import pytest

from imgclf.featurizer.store.dataset import FeatureDatasetWriter
from imgclf.featurizer.store.identity import FeaturizerIdentity
from imgclf.service.cli.main import main
from imgclf.training import train_job


def _files(root):
    """Return every file under ``root`` with its bytes (what "nothing was written" compares)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _dataset(dest, graph, *held):
    """Write a feature dataset with one row of each (precision, backend) in ``held``, made by ``graph``."""
    graph_sha256 = hashlib.sha256(graph.read_bytes()).hexdigest()
    for i, (precision, backend) in enumerate(held):
        identity = FeaturizerIdentity.from_description({"fingerprint": f"{i}" * 64, "precision": precision,
                                                        "backend": backend, "dim": 4, "graph_sha256": graph_sha256})
        writer = FeatureDatasetWriter(dest, identity, ["cats"], "photos/")
        writer.add("cats/a.jpg", "cats", "1" * 64, np.ones(4, np.float32))
        writer.flush()
    return dest


def _train(tmp_path, graph, *extra):
    return ["train", "--graph", str(graph), "--model-dir", str(tmp_path / "models"), "--name", "demo", "--quiet",
            *extra]


def _refused(tmp_path, capsys, argv):
    """Run ``argv``; return its one error line after checking the status (2) and that nothing was written."""
    before = _files(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("imgclf train: error: ") and err.count("\n") == 1, err
    assert _files(tmp_path) == before
    return err.removeprefix("imgclf train: error: ").rstrip("\n")


@pytest.mark.parametrize("held, extra, message", [
    ([("fp32", "tensorflow"), ("bf16", "tensorflow")], [],
     "holds features of this graph in bf16 on tensorflow, fp32 on tensorflow: pick one with --precision"),
    ([("fp32", "tensorflow")], ["--precision", "bf16"],
     "--precision bf16 contradicts '{ds}', which holds features of this graph in fp32 on tensorflow: leave "
     "--precision out to train on those, or featurize with --precision bf16 first"),
    ([("fp32", "tensorflow")], ["--backend", "openvino"], "--backend openvino contradicts '{ds}'"),
    ([("int8", "openvino")], [], "int8 features cannot be trained on from --features '{ds}': OpenVINO quantized "
                                 "the graph on the featurize run's own images"),
    ([("fp32", "tensorflow"), ("int8", "openvino")], ["--precision", "int8"],
     "int8 features cannot be trained on from --features '{ds}'"),
])
def test_features_that_are_ambiguous_contradicted_or_int8_are_refused_before_loading(
        tmp_path, legacy_graph_path, capsys, held, extra, message):
    ds = str(_dataset(tmp_path / "ds", legacy_graph_path, *held))
    assert message.format(ds=ds) in _refused(tmp_path, capsys, _train(tmp_path, legacy_graph_path, "--features", ds,
                                                                       *extra))


def test_features_of_another_graph_name_both_graphs(tmp_path, legacy_graph_path, capsys):
    other = tmp_path / "other.pb"
    other.write_bytes(legacy_graph_path.read_bytes() + b"\0")
    ds = str(_dataset(tmp_path / "ds", other, ("fp32", "tensorflow")))
    line = _refused(tmp_path, capsys, _train(tmp_path, legacy_graph_path, "--features", ds))
    mine, theirs = (hashlib.sha256(p.read_bytes()).hexdigest()[:12] for p in (legacy_graph_path, other))
    assert line == (f"--graph (sha256 {mine}) is not the graph of '{ds}', which holds features of graph sha256 "
                    f"{theirs} only (fp32 on tensorflow): give the --graph of the featurize run")


class _Stop(Exception):
    """Raised by the stand-in for run_train once it has the job."""


@pytest.fixture
def job_of(monkeypatch):
    """Return a function that runs `imgclf train` argv up to run_train and returns the TrainJob it would run."""
    jobs = []

    def stand_in(job):
        jobs.append(job)
        raise _Stop

    monkeypatch.setattr(train_job, "run_train", stand_in)

    def run(argv):
        with pytest.raises(_Stop):
            main(argv)
        return jobs.pop()
    return run


def test_the_flags_left_out_come_from_the_dataset_and_given_flags_win(tmp_path, legacy_graph_path, job_of):
    ds = str(_dataset(tmp_path / "ds", legacy_graph_path, ("fp32", "openvino"), ("fp32", "tensorflow")))
    job = job_of(_train(tmp_path, legacy_graph_path, "--features", ds, "--backend", "openvino"))
    assert (job.featurizer.precision, job.featurizer.backend, job.features) == ("fp32", "openvino", ds)
    job = job_of(_train(tmp_path, legacy_graph_path, "--features", ds, "--backend", "tensorflow"))
    assert (job.featurizer.precision, job.featurizer.backend) == ("fp32", "tensorflow")


def test_int8_implies_openvino_and_refuses_tensorflow(tmp_path, legacy_graph_path, job_of, capsys):
    images = tmp_path / "images"
    images.mkdir()
    base = _train(tmp_path, legacy_graph_path, str(images), "--cache", str(tmp_path / "c.sqlite"))
    job = job_of([*base, "--precision", "int8"])
    assert (job.featurizer.precision, job.featurizer.backend) == ("int8", "openvino")
    assert job.featurizer.needs_calibration
    job = job_of(base)  # neither flag: TensorFlow's auto, as before
    assert (job.featurizer.precision, job.featurizer.backend) == ("auto", "tensorflow")
    line = _refused(tmp_path, capsys, [*base, "--precision", "int8", "--backend", "tensorflow"])
    assert line.startswith("--precision int8 runs on OpenVINO only") and "leave --backend out" in line


def test_calibration_reaches_the_training_config(tmp_path, legacy_graph_path, job_of):
    images = tmp_path / "images"
    images.mkdir()
    base = _train(tmp_path, legacy_graph_path, str(images), "--cache", str(tmp_path / "c.sqlite"))
    assert job_of(base).train.calibration == "temperature"
    assert job_of([*base, "--calibration", "none"]).train.calibration == "none"


@pytest.mark.parametrize("option, value", [("--calibration", "platt"), ("--calibration", ""),
                                           ("--precision", "int4")])
def test_an_unknown_choice_is_argparse_s_one_error_line_and_exit_2(tmp_path, legacy_graph_path, capsys, option,
                                                                   value):
    before = _files(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(_train(tmp_path, legacy_graph_path, str(tmp_path), "--cache", str(tmp_path / "c.sqlite"), option, value))
    err = capsys.readouterr().err.rstrip("\n").splitlines()
    errors = [line for line in err if ": error: " in line]
    assert info.value.code == 2 and errors == [err[-1]]  # argparse: the usage, then one error line
    assert errors[0].startswith(f"imgclf train: error: argument {option}: invalid choice: {value!r}")
    assert _files(tmp_path) == before
