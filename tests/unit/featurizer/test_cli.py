"""`imgclf featurize`'s command line: options and what it imports."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from imgclf.featurizer.images.demo import write_demo_images
from imgclf.service.cli.main import main

REPO_ROOT = Path(__file__).resolve().parents[3]

# Runs in a fresh interpreter: build the whole `imgclf` parser (what --help prints), run the real
# featurize main, then report which heavy web modules got imported on the way.
_FEATURIZE_WITHOUT_FLASK = """
import json, sys
from imgclf.service.cli.main import build_parser, main
build_parser().format_help()
featurize = build_parser()._subparsers._group_actions[0].choices["featurize"]
featurize.format_help()
status = main(["featurize", sys.argv[1], "--graph", sys.argv[2], "--cache", sys.argv[3], "--quiet",
               "--precision", "fp32"])
print(json.dumps({"status": status, "web": sorted(m for m in sys.modules
                                                   if m.split(".")[0] in ("flask", "werkzeug", "gunicorn"))}))
"""


def test_featurize_never_imports_flask(tmp_path, legacy_graph_path):
    images = write_demo_images(tmp_path / "images", per_class=3)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run([sys.executable, "-c", _FEATURIZE_WITHOUT_FLASK, str(images), str(legacy_graph_path),
                           str(tmp_path / "c.sqlite")], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"status": 0, "web": []}
    assert (tmp_path / "c.sqlite").is_file()  # the real job ran


def test_graph_is_required_by_featurize_and_train(capsys):
    for command in (["featurize", "imgs", "--cache", "c.sqlite"],
                    ["train", "imgs", "--cache", "c", "--model-dir", "m", "--name", "x"]):
        with pytest.raises(SystemExit) as info:
            main(command)
        assert info.value.code == 2 and "--graph" in capsys.readouterr().err


@pytest.mark.parametrize("floor", ["1", "1.5", "-0.01", "nan"])
def test_an_int8_floor_out_of_range_is_a_usage_error_for_featurize_and_train(tmp_path, legacy_graph_path, floor,
                                                                             capsys):
    images = write_demo_images(tmp_path / "images", per_class=2)
    for command in (["featurize", str(images), "--cache", str(tmp_path / "c.sqlite")],
                    ["train", str(images), "--cache", str(tmp_path / "c.sqlite"), "--model-dir", str(tmp_path / "m"),
                     "--name", "x"]):
        assert main([*command, "--graph", str(legacy_graph_path), "--precision", "int8", f"--int8-floor={floor}",
                     "--openvino-cache", str(tmp_path / "ov")]) == 2
        assert "--int8-floor is a cosine from 0 (no floor) up to, not including, 1" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]  # nothing made: no cache, IR or model


def test_featurize_on_openvino_int8_reports_backend_and_calibration_and_resumes(tmp_path, legacy_graph_path, capsys):
    pytest.importorskip("openvino", reason="the imgclf[openvino] extra is not installed")
    images = write_demo_images(tmp_path / "images", per_class=3)
    command = ["featurize", str(images), "--graph", str(legacy_graph_path), "--cache", str(tmp_path / "c.sqlite"),
               "--precision", "int8", "--calibration-images", "8",  # no --backend: int8 implies openvino
               "--openvino-cache", str(tmp_path / "ov"), "--quiet", "--report", str(tmp_path / "r.json")]
    assert main(command) == 0
    assert "featurizer: openvino int8" in capsys.readouterr().out
    report = json.loads((tmp_path / "r.json").read_text())
    described = report["featurizer"]
    assert (described["backend"], described["precision"], report["computed"]) == ("openvino", "int8", 12)
    assert described["openvino"]["calibration"]["images"] == 8
    # --backend openvino said outright, the same calibration again: same fingerprint, every vector from the cache
    assert main([*command, "--backend", "openvino"]) == 0
    again = json.loads((tmp_path / "r.json").read_text())
    assert (again["from_cache"], again["computed"]) == (12, 0)
    assert again["featurizer"]["fingerprint"] == described["fingerprint"]


def test_int8_on_tensorflow_is_one_line_and_exit_2_before_any_work(tmp_path, legacy_graph_path, capsys):
    images = write_demo_images(tmp_path / "images", per_class=1)
    assert main(["featurize", str(images), "--graph", str(legacy_graph_path), "--cache", str(tmp_path / "c.sqlite"),
                 "--precision", "int8", "--backend", "tensorflow", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("imgclf featurize: error: --precision int8 runs on OpenVINO only") and err.count("\n") == 1
    assert not (tmp_path / "c.sqlite").exists()


def test_featurize_json_is_the_summary_and_agrees_with_the_report(tmp_path, legacy_graph_path, capsys):
    images = write_demo_images(tmp_path / "images", per_class=2)
    (images / "stripes" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    command = ["featurize", str(images), "--graph", str(legacy_graph_path), "--cache", str(tmp_path / "c.sqlite"),
               "--precision", "fp32", "--report", str(tmp_path / "r.json"), "--json"]
    assert main(command) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out)  # the whole of stdout is one JSON object: no progress, no table
    report = json.loads((tmp_path / "r.json").read_text())
    timing = {"seconds", "images_per_second", "model_busy", "decode_wait_seconds"}
    assert {k: v for k, v in summary.items() if k not in timing | {"output", "output_dataset"}} == \
        {k: v for k, v in report.items() if k not in timing}
    assert (summary["images"], summary["featurized"], summary["computed"]) == (9, 8, 8)
    assert [s["path"] for s in summary["skipped"]] == ["stripes/broken.jpg"]
    assert summary["label_names"] == sorted(p.name for p in images.iterdir())
    assert (summary["output"], summary["output_dataset"]) == (None, None) and err == ""
