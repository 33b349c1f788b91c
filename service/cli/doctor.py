"""`imgclf doctor`: what this machine offers imgclf, and what ``auto`` picks on it.

Versions (imgclf, Python, TensorFlow, OpenVINO, grpcio, ...), the CPU's features
that decide precisions (bf16, AMX, VNNI), the GPUs (TensorFlow's view, and
nvidia-smi's where it exists), the installed featurizer backends, where imgclf
looks for its files (the resolved defaults), and what ``--backend auto`` and
``--precision auto`` choose here. The choices come from the functions that make
them for real (:mod:`imgclf.core.precision`, :mod:`imgclf.featurizer.runtime.backend`),
so the doctor cannot disagree with a featurize or serve run on the same machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
from importlib import metadata

from imgclf.core import precision as core_precision
from imgclf.core.paths import imgclf_home, inception_dir, model_repository
from imgclf.core.settings import read_setting
from imgclf.core.version import package_version
from imgclf.featurizer.runtime import backend as featurizer_backend
from imgclf.service.cli.demo import REAL_GRAPH_NAME
from imgclf.service.settings import ServingSettings

# Distributions whose versions matter to imgclf; the first one installed of each group is reported.
DISTRIBUTIONS = {
    "tensorflow": ("tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tf-nightly", "tensorflow-intel"),
    "openvino": ("openvino",), "nncf": ("nncf",), "grpcio": ("grpcio",), "ray": ("ray",), "numpy": ("numpy",),
    "pillow": ("pillow",), "flask": ("flask",), "gunicorn": ("gunicorn",), "simplejpeg": ("simplejpeg",),
}
# CPU flags (as /proc/cpuinfo spells them) by what they give imgclf.
CPU_FEATURES = {
    "bf16": core_precision.NATIVE_BF16_FLAGS,  # native bf16 matrix math: precision auto picks bf16
    "amx": ("amx_tile", "amx_bf16", "amx_int8"),
    "vnni": core_precision.INT8_DOT_FLAGS,  # int8 dot products: OpenVINO's int8 recipe
    "avx512": ("avx512f",),
    "avx2": ("avx2",),
}
NVIDIA_SMI_QUERY = ("--query-gpu=index,name,driver_version,memory.total,compute_cap", "--format=csv,noheader")


def register(sub: argparse._SubParsersAction) -> None:
    """Add `imgclf doctor`."""
    p = sub.add_parser("doctor", help="report versions, CPU features, GPUs, backends, paths and what auto picks",
                       description="Report what this machine offers imgclf: versions of imgclf and its "
                                   "libraries, the CPU features behind precisions (bf16, AMX, VNNI), the GPUs "
                                   "(TensorFlow's view and nvidia-smi's), the installed featurizer backends, "
                                   "where the graph, the data folder and the model repository are, and what "
                                   "--backend auto and --precision auto choose here. Imports TensorFlow.")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.set_defaults(func=cmd_doctor)


def versions() -> dict[str, str | None]:
    """Return the versions of imgclf, Python and :data:`DISTRIBUTIONS` (None: not installed), from metadata."""
    found: dict[str, str | None] = {"imgclf": package_version(), "python": platform.python_version()}
    for name, candidates in DISTRIBUTIONS.items():
        found[name] = None
        for dist in candidates:
            try:
                found[name] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return found


def cpu() -> dict:
    """Return the CPU's model, usable CPUs, and its flags of :data:`CPU_FEATURES` (each a list, empty if none)."""
    flags = core_precision.cpu_flags()
    return {
        "model": core_precision.cpu_model(),
        "machine": platform.machine(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "features": {feature: [flag for flag in names if flag in flags] for feature, names in CPU_FEATURES.items()},
    }


def nvidia_smi() -> list[str] | None:
    """Return nvidia-smi's one line per GPU (index, name, driver, memory, compute capability); None without it."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        done = subprocess.run([exe, *NVIDIA_SMI_QUERY], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [f"nvidia-smi failed: {exc}"]
    if done.returncode != 0:
        return [f"nvidia-smi failed ({done.returncode}): {(done.stderr or done.stdout).strip()[:200]}"]
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


def tensorflow_view() -> dict:
    """Return TensorFlow's GPUs, the device imgclf computes on, and what auto picks there (TensorFlow imported).

    Without TensorFlow: ``{"error": ...}`` and no picks.
    """
    try:
        import tensorflow as tf
    except ImportError as exc:
        return {"error": f"TensorFlow cannot be imported: {exc}"}
    from imgclf.core.devices import compute_target

    gpus = []
    for device in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(device) or {}
        capability = details.get("compute_capability")
        gpus.append({"device": device.name, "name": str(details.get("device_name", "")),
                     "compute_capability": ".".join(map(str, capability)) if capability else None})
    target = compute_target()
    return {"gpus": gpus, "built_with_cuda": tf.test.is_built_with_cuda(), "onednn": core_precision.onednn_enabled(),
            "target": target}


def auto_picks(target) -> dict:
    """Return what ``--backend auto`` and ``--precision auto`` resolve to on ``target``, by the real resolvers."""
    picks: dict = {"device": target.describe()}
    try:
        picks["tensorflow_precision"] = core_precision.resolve_precision("auto", target)
    except ValueError as exc:
        picks["tensorflow_precision"] = f"error: {exc}"
    picks["backend"] = featurizer_backend.resolve_backend("auto", target)
    if picks["backend"] == "openvino":
        from imgclf.featurizer.runtime.openvino import int8_recipe, resolve_openvino_precision

        picks["precision"] = resolve_openvino_precision("auto")
        picks["int8_recipe"] = int8_recipe()
    else:
        picks["precision"] = picks["tensorflow_precision"]
    return picks


def paths() -> dict:
    """Return where imgclf looks for its files when no option says (each with whether it exists)."""
    from imgclf.core.repository import list_models

    graph = inception_dir() / REAL_GRAPH_NAME
    repository = model_repository()
    home = imgclf_home()
    return {
        "home": {"path": str(home), "exists": home.is_dir()},
        "inception_graph": {"path": str(graph), "exists": graph.is_file()},
        "openvino_cache": {"path": str(home / "openvino"), "exists": (home / "openvino").is_dir()},
        "demo": {"path": str(home / "demo"), "exists": (home / "demo").is_dir()},
        "model_repository": {"path": str(repository.absolute()), "exists": repository.is_dir(),
                             "models": {name: sorted(v) for name, v in list_models(repository).items()}
                             if repository.is_dir() else {}},
    }


def report() -> dict:
    """Return the whole report (what ``imgclf doctor --json`` prints)."""
    found = {"versions": versions(), "cpu": cpu()}
    found["backends"] = {"tensorflow": found["versions"]["tensorflow"] is not None,
                         "openvino": featurizer_backend.openvino_installed()}
    view = tensorflow_view()
    target = view.pop("target", None)
    found["gpus"] = {"tensorflow": view, "nvidia_smi": nvidia_smi()}
    found["paths"] = paths()
    found["auto"] = auto_picks(target) if target is not None else {"error": view.get("error")}
    found["serving"] = {name: read_setting(ServingSettings, name) for name in ("backend", "precision")}
    return found


def format_report(found: dict) -> str:
    """Return the report as aligned text, one fact a line."""
    lines = ["versions:"]
    lines += [f"  {name:<12} {version or 'not installed'}" for name, version in found["versions"].items()]
    c = found["cpu"]
    lines += ["cpu:", f"  {'model':<12} {c['model']} ({c['machine']}, {c['usable_cpus']} usable CPUs)"]
    lines += [f"  {feature:<12} {', '.join(flags) or 'no'}" for feature, flags in c["features"].items()]
    gpus = found["gpus"]
    lines.append("gpus:")
    tf_view = gpus["tensorflow"]
    if "error" in tf_view:
        lines.append(f"  {'tensorflow':<12} {tf_view['error']}")
    else:
        shown = [f"{g['device']} {g['name']} (compute capability {g['compute_capability'] or 'unknown'})"
                 for g in tf_view["gpus"]]
        cuda, onednn = ("yes" if tf_view["built_with_cuda"] else "no"), ("on" if tf_view["onednn"] else "off")
        lines.append(f"  {'tensorflow':<12} {'; '.join(shown) or 'none'} (built with CUDA: {cuda}; oneDNN: {onednn})")
    smi = gpus["nvidia_smi"]
    lines.append(f"  {'nvidia-smi':<12} " + ("not found" if smi is None else ("; ".join(smi) or "no GPU")))
    lines.append("backends:")
    lines += [f"  {name:<12} {'installed' if ok else 'not installed'}" for name, ok in found["backends"].items()]
    lines.append("paths:")
    for name, where in found["paths"].items():
        extra = ""
        if name == "model_repository" and where["models"]:
            extra = " (" + ", ".join(f"{m} v{max(v)}" for m, v in where["models"].items() if v) + ")"
        lines.append(f"  {name:<16} {where['path']}{'' if where['exists'] else ' (missing)'}{extra}")
    lines.append("auto picks:")
    lines += [f"  {name:<20} {value}" for name, value in found["auto"].items()]
    lines.append("serving (IMGCLF_BACKEND, IMGCLF_PRECISION):")
    lines += [f"  {name:<12} {value}" for name, value in found["serving"].items()]
    return "\n".join(lines)


def cmd_doctor(args: argparse.Namespace) -> int:
    """Run `imgclf doctor`."""
    found = report()
    print(json.dumps(found, indent=2) if args.json else format_report(found))
    return 0
