"""How well analyze's latency estimate predicts a bundle's measured latency (issue 22).

For each model of the public suite (``bench/public_suite.py``), built untuned for ``host``:

* **measured**: the bundle's latency, ``hwcomp bench`` (its runner in its own process, the
  target's threads, median of ``--repeat`` runs after warm-up);
* **roofline**: ``hwcomp analyze``'s estimate with no latency table (the profile's peaks);
* **own table**: ``analyze`` after ``hwcomp profile`` of this very bundle (its conv / matmul
  layers measured, their epilogues fused, the rest roofline): how much the per-layer sum
  misses of the whole (kernels outside the layers, VM overhead);
* **leave one out**: ``analyze`` with a table built from the *other* models' profiles only:
  layers of a shape some other model measured are "measured", the other conv / matmul
  layers "predicted" (a line per op and precision through the measured sizes). This is the
  figure for a model nobody profiled.

Per layer: for every conv / matmul layer of a model, its leave-one-out prediction against
its own measured time. Ratios are estimate / measured; goal (issue 22): whole model within
±15 % for ≥ 90 % of models, layers within ±25 % for ≥ 80 %.

    .venv/bin/python bench/latency_prediction.py [--models a,b] [--repeat 30]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import public_suite  # noqa: E402
from hwcomp import api  # noqa: E402
from hwcomp import bench as hwbench  # noqa: E402
from hwcomp import profile as latency  # noqa: E402
from hwcomp.targets import load_target  # noqa: E402


def _table(layers: dict[str, dict], path: Path) -> None:
    """Write a latency table of ``layers`` for host under the cache root ``path``."""
    (path / "latency").mkdir(parents=True, exist_ok=True)
    (path / "latency" / "host.json").write_text(json.dumps(
        {"schema": latency.SCHEMA, "target": "host", "entries": {}, "layers": layers}))


def _analyze(model: Path, cache: Path) -> tuple[float, dict[str, tuple[float, str]]]:
    os.environ["HWCOMP_CACHE_DIR"] = str(cache)
    found = api.analyze(model, "host")
    return found.roofline.total_s, {layer.name: (layer.time_s, layer.source)
                                    for layer in found.roofline.layers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(public_suite.SUITE))
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    real_cache = os.environ.get("HWCOMP_CACHE_DIR", "")
    target = load_target("host")
    rows, layer_ratios = [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        own: dict[str, dict[str, dict]] = {}
        measured: dict[str, float] = {}
        paths: dict[str, Path] = {}
        for name in args.models.split(","):
            path = work / f"{name}.onnx"
            public_suite.onnx.save(public_suite.build(name), path)
            paths[name] = path
            if real_cache:  # runner binaries and runtimes from the usual cache
                os.environ["HWCOMP_CACHE_DIR"] = real_cache
            else:
                os.environ.pop("HWCOMP_CACHE_DIR", None)
            result = api.build(path, "host", work / "out")
            stats = hwbench.bench(result.bundle, "local", 5, args.repeat, 1, 0, False)
            measured[name] = stats.hwcomp.median_ms / 1e3
            os.environ["HWCOMP_CACHE_DIR"] = str(work / f"cache-{name}")
            found = latency.profile_bundle(result.bundle, target, result.manifest, runs=10)
            own[name] = latency.load_table("host").get("layers", {})
            print(json.dumps({"model": name, "measured_ms": measured[name] * 1e3,
                              "kernels_ms": found.kernels_s * 1e3,
                              "layers": len(own[name])}), flush=True)
        for name, path in paths.items():
            _table({}, work / "empty")
            roof, _ = _analyze(path, work / "empty")
            _table(own[name], work / "own")
            own_total, own_layers = _analyze(path, work / "own")
            others = {k: v for m, layers in own.items() if m != name for k, v in layers.items()}
            _table(others, work / "loo")
            loo_total, loo_layers = _analyze(path, work / "loo")
            sources = [source for _, source in loo_layers.values()]
            for layer, (seconds, source) in loo_layers.items():
                mine = own_layers.get(layer)
                if mine and mine[1] == "measured" and source in ("measured", "predicted"):
                    layer_ratios.append(seconds / mine[0])
            rows.append((name, measured[name], roof, own_total, loo_total,
                         sources.count("measured"), sources.count("predicted")))
    print("\n| model | measured ms | roofline | own table | leave one out | layers measured / "
          "predicted (leave one out) |")
    print("|---|---:|---:|---:|---:|---:|")
    within = 0
    for name, whole, roof, own_total, loo, n_measured, n_predicted in rows:
        within += abs(loo / whole - 1) <= 0.15
        print(f"| {name} | {whole * 1e3:.2f} | {roof / whole:.2f}x | {own_total / whole:.2f}x | "
              f"{loo / whole:.2f}x | {n_measured} / {n_predicted} |")
    ratios = np.array(layer_ratios)
    print(f"\nwhole model, leave one out within ±15 %: {within} of {len(rows)}")
    if ratios.size:
        print(f"layers (conv / matmul, leave one out vs own measurement): {ratios.size}, "
              f"within ±25 %: {np.mean(np.abs(ratios - 1) <= 0.25):.0%}, median ratio "
              f"{np.median(ratios):.2f}")


if __name__ == "__main__":
    main()
