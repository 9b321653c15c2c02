#!/usr/bin/env python3
"""On-device runner of an edgepack bundle. Needs only numpy and the bundle's runtime.

    python run.py --input x.npy --output y.npz             # run once
    python run.py --runs 50 --warmup 5 --report stats.json # time it (random input)

Reads manifest.json beside it for the model file, the runtime and the inputs.
``--input`` takes an .npy (one input) or an .npz keyed by input name; without it
a seeded random input of the manifest's shapes is used. ``--output`` writes an
.npz keyed by output name. ``--report`` writes latencies (ms) and the versions.
"""

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROI_BEGIN, ROI_END = 0x4ED0, 0x4ED1  # markers for an instruction-counting qemu plugin


def _tflite(module_names, model_path, threads):
    for name in module_names:
        try:
            module = __import__(name, fromlist=["Interpreter"])
            break
        except ImportError:
            continue
    else:
        sys.exit("run.py: none of {} is installed; pip install -r requirements.txt".format(", ".join(module_names)))
    interp = module.Interpreter(model_path=model_path, num_threads=threads)
    interp.allocate_tensors()
    ins = interp.get_input_details()
    outs = interp.get_output_details()

    def run(feeds):
        for detail, array in zip(ins, feeds):
            interp.set_tensor(detail["index"], _quantize(array, detail))
        interp.invoke()
        return [_dequantize(interp.get_tensor(d["index"]), d) for d in outs]

    version = getattr(module, "__version__", None) or getattr(
        sys.modules[module.__name__.split(".")[0]], "__version__", "?"
    )
    return run, version


RAW = "--raw" in sys.argv  # keep integer outputs of an int8-I/O model as they are


def _quantize(array, detail):
    """Float data for an integer (int8-I/O) input is quantized with the tensor's own scale and zero point."""
    dtype = np.dtype(detail["dtype"])
    scale, zero = detail.get("quantization", (0.0, 0))
    if dtype.kind in "iu" and array.dtype.kind == "f" and scale:
        info = np.iinfo(dtype)
        return np.clip(np.round(array / scale + zero), info.min, info.max).astype(dtype)
    return np.ascontiguousarray(array, dtype=dtype)


def _dequantize(array, detail):
    scale, zero = detail.get("quantization", (0.0, 0))
    if not RAW and array.dtype.kind in "iu" and scale:
        return ((array.astype(np.float32) - zero) * scale).astype(np.float32)
    return array


def _onnxruntime(model_path, threads, providers=None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    available = ort.get_available_providers()
    chosen = [p for p in (providers or ["CPUExecutionProvider"]) if p in available] or ["CPUExecutionProvider"]
    sess = ort.InferenceSession(model_path, opts, providers=chosen)
    names = [i.name for i in sess.get_inputs()]

    def run(feeds):
        return sess.run(None, dict(zip(names, feeds)))

    return run, ort.__version__


def _openvino(model_path, threads, precision):
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": threads}
    if precision:
        config["INFERENCE_PRECISION_HINT"] = precision
    compiled = core.compile_model(model_path, "CPU", config)
    request = compiled.create_infer_request()

    def run(feeds):
        request.infer(list(feeds))
        return [np.array(request.get_output_tensor(i).data) for i in range(len(compiled.outputs))]

    return run, ov.get_version()


def load(manifest, threads, precision):
    model = os.path.join(HERE, manifest["model"]["file"])
    runtime = manifest["runtime"]["name"]
    if runtime == "litert":
        return _tflite(["ai_edge_litert.interpreter", "tflite_runtime.interpreter"], model, threads)
    if runtime == "tflite-runtime":
        return _tflite(["tflite_runtime.interpreter", "ai_edge_litert.interpreter"], model, threads)
    if runtime == "onnxruntime":
        return _onnxruntime(model, threads)
    if runtime == "tensorrt":
        # On a Jetson, ONNX Runtime's TensorRT provider builds the engine from the same ONNX.
        return _onnxruntime(model, threads, ["TensorrtExecutionProvider", "CUDAExecutionProvider"])
    if runtime == "openvino":
        return _openvino(model, threads, precision)
    sys.exit(f"run.py: unknown runtime {runtime!r} in manifest.json")


def read_inputs(path, specs, seed):
    if path is None:  # float noise in [0, 1); integer inputs get it quantized by the runtime wrapper
        rng = np.random.default_rng(seed)
        return [rng.random([d or 1 for d in s["shape"]]).astype(np.float32) for s in specs]
    data = np.load(path, allow_pickle=False)
    if isinstance(data, np.ndarray):
        if len(specs) != 1:
            sys.exit(f"run.py: the model has {len(specs)} inputs; give an .npz keyed by input name")
        arrays = [data]
    else:
        missing = [s["name"] for s in specs if s["name"] not in data.files]
        arrays = [data[s["name"]] for s in specs] if not missing else [data[k] for k in data.files]
        if len(arrays) != len(specs):
            sys.exit("run.py: input .npz lacks {}".format(", ".join(missing)))
    for spec, array in zip(specs, arrays):
        if list(array.shape) != list(spec["shape"]):
            sys.exit(
                "run.py: input {} has shape {}, the model wants {}".format(
                    spec["name"], list(array.shape), spec["shape"]
                )
            )
    # Float data for an integer input stays float here: the runtime wrapper quantizes it with the tensor's params.
    return [a if np.dtype(s["dtype"]).kind in "iu" and a.dtype.kind == "f" else np.ascontiguousarray(a, s["dtype"])
            for s, a in zip(specs, arrays)]


def _marker(number):
    # An instruction-counting qemu plugin counts between these no-op syscalls. Collecting and pausing
    # the garbage collector first makes the count independent of what ran before (e.g. .pyc compiles).
    if os.environ.get("EDGEPACK_COUNT") == "1":
        import ctypes
        import gc

        if number == ROI_BEGIN:
            _marker.libc = ctypes.CDLL(None)
            gc.collect()
            gc.disable()
        _marker.libc.syscall(number)
        if number == ROI_END:
            gc.enable()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input")
    parser.add_argument("--output")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precision", help="OpenVINO inference precision hint, e.g. f32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report")
    parser.add_argument("--raw", action="store_true", help="keep integer outputs of int8-I/O models undequantized")
    args = parser.parse_args(argv)

    with open(os.path.join(HERE, "manifest.json")) as fh:
        manifest = json.load(fh)
    run, version = load(manifest, args.threads, args.precision)
    feeds = read_inputs(args.input, manifest["inputs"], args.seed)
    for _ in range(args.warmup):
        run(feeds)
    times = []
    _marker(ROI_BEGIN)
    for _ in range(args.runs):
        start = time.perf_counter()
        outputs = run(feeds)
        times.append((time.perf_counter() - start) * 1e3)
    _marker(ROI_END)
    if args.output:
        names = [o["name"] for o in manifest["outputs"]]
        np.savez(args.output, **{n: np.asarray(o) for n, o in zip(names, outputs)})
    if args.report:
        with open(args.report, "w") as fh:
            json.dump(
                {
                    "runtime": manifest["runtime"]["name"],
                    "runtime_version": str(version),
                    "numpy_version": np.__version__,
                    "python": platform.python_version(),
                    "machine": platform.machine(),
                    "threads": args.threads,
                    "runs": args.runs,
                    "warmup": args.warmup,
                    "latency_ms": times,
                },
                fh,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
