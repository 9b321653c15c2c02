#!/usr/bin/env python3
"""On-device runner of an edgepack bundle. Needs only numpy and the bundle's runtime.

    python run.py --input x.npy --output y.npz             # run once
    python run.py --runs 50 --warmup 5 --report stats.json # time it (random input)
    python run.py --input xs.npz --count 1 --runs 0        # check samples, count one inference
    python run.py --pubkey /etc/edgepack/key.pub ...       # also require the bundle's Ed25519 signature

Before anything but the standard library is imported, every file of the bundle is checked against
manifest.json's sha256 list and the manifest against its seal (edgepack_verify.py, beside this file);
with ``--pubkey PATH`` or ``$EDGEPACK_PUBKEY`` the manifest's signature must verify with that key
(that needs the ``cryptography`` package). A refusal is one line on stderr, and nothing runs.
``--skip-verify`` runs without the checks, and stderr and the report say so.

Exit codes: 0 ran; 1 failed to run (runtime missing, bad input); 2 bad arguments;
6 a key was given but ``cryptography`` is not installed; 11 a file or the manifest does not match
(tampered, corrupt, or a file of code not in the manifest); 14 unsigned, wrongly signed, or the key
is unreadable.

Reads manifest.json beside it for the model file, the runtime and the inputs.
``--input`` takes an .npy (one input), an .npz keyed by input name, or an .npz of
several samples keyed ``"<i>:<input name>"`` (each is run; outputs are keyed the
same way); without it a seeded random input of the manifest's shapes is used.
``--output`` writes an .npz keyed by output name. ``--report`` writes latencies
(ms), the versions, what the runtime executed (``delegation``) and what was verified.

``--runs N`` times N inferences one by one (clock reads between them). ``--count N``
runs N inferences as one block with nothing but the runtime's invoke call inside:
under an instruction-counting qemu plugin (``EDGEPACK_COUNT=1``) that block is the
counted region, marked with the no-op syscalls 0x4ED0/0x4ED1 after an empty region
that measures the markers' own cost. ``--count-first`` counts the first sample's own
inference instead (cold: it includes the runtime's first-run setup), for a model too big
to run a second time under emulation.
"""

import os  # os and sys are loaded at start-up: the only imports made before the guard below
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if sys.path and os.path.abspath(sys.path[0] or os.curdir) == HERE:
    del sys.path[0]  # a file planted beside this script (json.py, numpy.py) must never be imported

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

ROI_BEGIN, ROI_END = 0x4ED0, 0x4ED1  # markers for an instruction-counting qemu plugin
RAW = "--raw" in sys.argv  # keep integer outputs of an int8-I/O model as they are
VERIFIER = "edgepack_verify.py"
EXIT_INTEGRITY = 11


def parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input")
    p.add_argument("--output")
    p.add_argument("--runs", type=int, default=1, help="inferences timed one by one")
    p.add_argument("--count", type=int, default=0, help="inferences run (and counted) as one block")
    p.add_argument("--count-first", action="store_true", help="count the first sample's inference (cold)")
    p.add_argument("--warmup", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--precision", help="OpenVINO inference precision hint, e.g. f32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report")
    p.add_argument("--raw", action="store_true", help="keep integer outputs of int8-I/O models undequantized")
    p.add_argument("--pubkey", help="Ed25519 public key (PEM) the bundle must be signed with [$EDGEPACK_PUBKEY]")
    p.add_argument("--skip-verify", action="store_true", help="run without checking the bundle (said in the output)")
    return p


def verify(argv):
    """Check the bundle before it is loaded; returns (what was verified, the manifest or None). Exits on refusal."""
    args, _ = parser().parse_known_args(argv)
    if args.skip_verify:
        print("run.py: --skip-verify: the bundle was NOT verified", file=sys.stderr)
        return {"verified": "skipped"}, None
    sys.dont_write_bytecode = True  # a __pycache__ written into the bundle would be a file it does not list
    path = os.path.join(HERE, VERIFIER)
    if not os.path.isfile(path):
        return _no_verifier(args), None
    import importlib.machinery
    import types

    loader = importlib.machinery.SourceFileLoader("edgepack_verify", path)
    module = types.ModuleType(loader.name)
    loader.exec_module(module)
    try:
        facts, manifest = module.verify_bundle(HERE, module.pubkey_from(args.pubkey))
    except module.Refused as exc:
        _refuse(exc.code, str(exc))
    if facts["verified"] == "unsealed":
        print("run.py: manifest.json is not sealed (not an edgepack bundle): nothing was verified", file=sys.stderr)
    return facts, manifest


def _no_verifier(args):
    """A bare run.py beside a hand-written manifest runs unverified; a sealed or signed bundle without it does not."""
    try:
        with open(os.path.join(HERE, "manifest.json")) as fh:
            manifest = json.load(fh)
    except (OSError, ValueError):
        manifest = {}
    sealed = "manifest_sha256" in manifest or "files" in manifest or os.path.exists(HERE + "/manifest.json.sig")
    if sealed or args.pubkey or os.environ.get("EDGEPACK_PUBKEY"):
        _refuse(EXIT_INTEGRITY, f"{VERIFIER} is missing from the bundle")
    print("run.py: manifest.json is not sealed (not an edgepack bundle): nothing was verified", file=sys.stderr)
    return {"verified": "unsealed"}


def _refuse(code, reason):
    print(
        f"run.py: refused to run: {reason}; nothing was run. Fetch a fresh copy of the bundle "
        "(or check the key); --skip-verify overrides.",
        file=sys.stderr,
    )
    sys.exit(code)


VERIFIED = verify(sys.argv[1:]) if __name__ == "__main__" else None

import numpy as np  # noqa: E402 - imported only once the bundle is verified: a planted numpy.py would run


class Model:
    """A loaded model: ``set_inputs(feeds)``, ``invoke()`` (the inference alone), ``outputs()``."""

    def __init__(self, set_inputs, invoke, outputs, version, delegation):
        self.set_inputs, self.invoke, self.outputs = set_inputs, invoke, outputs
        self.version, self.delegation = version, delegation

    def __call__(self, feeds):
        self.set_inputs(feeds)
        self.invoke()
        return self.outputs()


def _tflite(module_names, model_path, threads, shapes=(), out_shapes=()):
    for name in module_names:
        try:
            module = __import__(name, fromlist=["Interpreter"])
            break
        except ImportError:
            continue
    else:
        sys.exit("run.py: none of {} is installed; pip install -r requirements.txt".format(", ".join(module_names)))
    interp = module.Interpreter(model_path=model_path, num_threads=threads)
    for detail, shape in zip(interp.get_input_details(), shapes):  # e.g. [1, 512] for a file's [-1, 512]
        size = _resize_to(detail["shape"], shape)
        if size is not None:
            interp.resize_tensor_input(detail["index"], size, strict=False)
    interp.allocate_tensors()
    ins = interp.get_input_details()
    outs = interp.get_output_details()

    def set_inputs(feeds):
        for detail, array in zip(ins, feeds):
            array = _quantize(array, detail)
            if array.ndim == 0 and array.shape != tuple(detail["shape"]):  # a scalar in the [1] tensor
                array = array.reshape(detail["shape"])
            interp.set_tensor(detail["index"], array)

    def outputs():
        got = [_dequantize(interp.get_tensor(d["index"]), d) for d in outs]
        # A scalar output computed from a scalar fed as [1] comes out as [1]: it is given back as the scalar.
        wanted = list(out_shapes) + [None] * len(got)
        return [o.reshape(()) if s == [] and o.size == 1 else o for o, s in zip(got, wanted)]

    version = getattr(module, "__version__", None) or getattr(
        sys.modules[module.__name__.split(".")[0]], "__version__", "?"
    )
    return Model(set_inputs, interp.invoke, outputs, version, lambda: _tflite_delegation(interp, outs))


def _resize_to(current, wanted):
    """The shape to resize an input to before allocation, or None to keep the file's.

    A scalar (``[]``) the file declares as ``[-1]`` (onnx2tf does) stays ``[1]`` and is fed reshaped:
    resizing to ``[]`` segfaults ai-edge-litert 2.3.0's aarch64 build (see tests/test_scalar_inputs.py).
    """
    if wanted is None or None in wanted:
        return None
    current = [int(d) for d in current]
    if list(wanted) == []:
        return None if all(d == 1 for d in current) else [1] * max(1, len(current))
    return list(wanted) if current != list(wanted) else None


def _tflite_delegation(interp, outs):
    """Operators of the execution plan: how many a delegate took, which ran on the built-in kernels.

    The node list holds the model's operators and then the delegate nodes that replaced some of them;
    walking back from the outputs through the producers (a delegate's first) finds the plan.
    """
    try:
        ops = interp._get_ops_details()  # noqa: SLF001 - the only view of the nodes
    except Exception as exc:  # noqa: BLE001 - older runtimes lack it
        return {"runtime": "litert", "error": str(exc)[:200]}
    model_ops = [o for o in ops if o["op_name"] != "DELEGATE"]
    producer = {int(t): o for o in model_ops for t in o["outputs"]}
    producer.update({int(t): o for o in ops if o["op_name"] == "DELEGATE" for t in o["outputs"]})
    todo, seen, plan = [int(d["index"]) for d in outs], set(), {}
    while todo:
        tensor = todo.pop()
        op = producer.get(tensor)
        if tensor in seen or op is None:
            continue
        seen.add(tensor)
        plan[op["index"]] = op
        todo.extend(int(t) for t in op["inputs"] if t >= 0)
    builtin = [o for o in plan.values() if o["op_name"] != "DELEGATE"]
    # An operator that produces int8 activations ran an int8 kernel (a hybrid op's int8 weights do not count).
    int8 = [o for o in model_ops if any(np.dtype(t) == np.int8 for t in o.get("result_types", []))]
    return {
        "runtime": "litert",
        "model_ops": len(model_ops),
        "delegated_ops": len(model_ops) - len(builtin),
        "delegate_nodes": len(plan) - len(builtin),
        "reference_ops": {n: [o["op_name"] for o in builtin].count(n) for n in sorted({o["op_name"] for o in builtin})},
        "int8_ops": len(int8),
        "int8": bool(int8),
    }


def _quantize(array, detail):
    """Float data for an integer (int8-I/O) input is quantized with the tensor's own scale and zero point."""
    dtype = np.dtype(detail["dtype"])
    scale, zero = detail.get("quantization", (0.0, 0))
    if dtype.kind in "iu" and array.dtype.kind == "f" and scale:
        info = np.iinfo(dtype)
        return np.clip(np.round(array / scale + zero), info.min, info.max).astype(dtype)
    return np.require(array, dtype=dtype, requirements="C")


def _dequantize(array, detail):
    scale, zero = detail.get("quantization", (0.0, 0))
    if not RAW and array.dtype.kind in "iu" and scale:
        return ((array.astype(np.float32) - zero) * scale).astype(np.float32)
    return array


ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
}


def _onnxruntime(model_path, threads, providers=None):
    # ONNX Runtime's telemetry starts threads at import that run (and are counted) at random times.
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    import onnxruntime as ort

    if hasattr(ort, "disable_telemetry_events"):  # its upload threads would run inside the inference
        ort.disable_telemetry_events()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only: saving the optimized graph warns that it is hardware-specific
    for pool in ("intra_op", "inter_op"):  # a spinning idle worker would execute (and count) at random
        opts.add_session_config_entry(f"session.{pool}.allow_spinning", "0")
    available = ort.get_available_providers()
    chosen = [p for p in (providers or ["CPUExecutionProvider"]) if p in available] or ["CPUExecutionProvider"]
    optimized = os.path.join(_scratch(), "optimized.onnx")  # the graph as ONNX Runtime runs it
    opts.optimized_model_filepath = optimized
    sess = ort.InferenceSession(model_path, opts, providers=chosen)
    names = [i.name for i in sess.get_inputs()]
    dtypes = [ORT_DTYPES.get(i.type) for i in sess.get_inputs()]  # feeds are cast to what the model takes
    binding = sess.io_binding()  # inputs bound once: the invoke is the session's run alone
    held: list = []

    def set_inputs(feeds):
        held[:] = [np.require(a, dtype=d, requirements="C") for a, d in zip(feeds, dtypes)]
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        for name, array in zip(names, held):
            binding.bind_cpu_input(name, array)
        for out in sess.get_outputs():
            binding.bind_output(out.name)

    def delegation():
        facts = {"runtime": "onnxruntime", "providers": sess.get_providers()}
        try:
            with open(optimized, "rb") as fh:
                ops = onnx_op_types(fh.read())
        except (OSError, ValueError, IndexError) as exc:
            return {**facts, "error": str(exc)[:200]}
        int8 = {op: n for op, n in ops.items() if op.startswith("QLinear") or op in INT8_ORT_OPS}
        return {**facts, "ops": ops, "int8_ops": sum(int8.values()), "int8": bool(int8)}

    return Model(
        set_inputs, lambda: sess.run_with_iobinding(binding), binding.copy_outputs_to_cpu, ort.__version__, delegation
    )


# ONNX Runtime operators that run int8 kernels (besides QLinear*): what its optimizer fuses QDQ groups into.
INT8_ORT_OPS = {"ConvInteger", "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QGemm", "QAttention"}


def _scratch():
    import atexit
    import shutil
    import tempfile

    path = tempfile.mkdtemp(prefix="edgepack-run-")
    atexit.register(shutil.rmtree, path, True)
    return path


def _fields(buf):
    """(field number, value) of a serialized protobuf message: ints for varints, bytes for the rest."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + size], pos + size
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, pos = buf[pos : pos + size], pos + size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, value


def _varint(buf, pos):
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def onnx_op_types(model_bytes):
    """Operator types and counts of an ONNX model's main graph, read without the onnx package."""
    counts: dict = {}
    for number, graph in _fields(memoryview(model_bytes)):
        if number != 7:  # ModelProto.graph
            continue
        for field, node in _fields(graph):
            if field == 1:  # GraphProto.node
                op = next((bytes(v).decode() for f, v in _fields(node) if f == 4), "?")  # NodeProto.op_type
                counts[op] = counts.get(op, 0) + 1
    return dict(sorted(counts.items()))


def _openvino(model_path, threads, precision):
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": threads}
    if precision:
        config["INFERENCE_PRECISION_HINT"] = precision
    if precision == "f32" and "DYNAMIC_QUANTIZATION_GROUP_SIZE" in core.get_property("CPU", "SUPPORTED_PROPERTIES"):
        config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = 0  # f32 means f32: no on-the-fly int8 activations
    compiled = core.compile_model(model_path, "CPU", config)
    request = compiled.create_infer_request()

    dtypes = [port.get_element_type().to_dtype() for port in compiled.inputs]  # feeds are cast to these

    def set_inputs(feeds):
        for i, (array, dtype) in enumerate(zip(feeds, dtypes)):
            request.set_input_tensor(i, ov.Tensor(np.require(array, dtype=dtype, requirements="C")))

    def outputs():
        return [np.array(request.get_output_tensor(i).data) for i in range(len(compiled.outputs))]

    return Model(set_inputs, request.infer, outputs, ov.get_version(), lambda: _openvino_delegation(compiled))


def _openvino_delegation(compiled):
    """Execution precisions of the compiled (runtime) graph's layers."""
    precisions: dict = {}
    try:
        for op in compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            try:
                value = info["runtimePrecision"]
            except (KeyError, RuntimeError):
                value = None
            key = str(value.astype(str) if hasattr(value, "astype") else value)
            precisions[key] = precisions.get(key, 0) + 1
    except Exception as exc:  # noqa: BLE001
        return {"runtime": "openvino", "error": str(exc)[:200]}
    return {"runtime": "openvino", "exec_precisions": precisions, "int8": any(k in ("i8", "u8") for k in precisions)}


def load(manifest, threads, precision):
    model = os.path.join(HERE, manifest["model"]["file"])
    runtime = manifest["runtime"]["name"]
    shapes = [spec.get("shape") for spec in manifest.get("inputs", [])]
    out_shapes = [spec.get("shape") for spec in manifest.get("outputs", [])]
    if runtime == "litert":
        return _tflite(["ai_edge_litert.interpreter", "tflite_runtime.interpreter"], model, threads, shapes, out_shapes)
    if runtime == "tflite-runtime":
        return _tflite(["tflite_runtime.interpreter", "ai_edge_litert.interpreter"], model, threads, shapes, out_shapes)
    if runtime == "onnxruntime":
        return _onnxruntime(model, threads)
    if runtime == "tensorrt":
        # On a Jetson, ONNX Runtime's TensorRT provider builds the engine from the same ONNX.
        return _onnxruntime(model, threads, ["TensorrtExecutionProvider", "CUDAExecutionProvider"])
    if runtime == "openvino":
        return _openvino(model, threads, precision)
    sys.exit(f"run.py: unknown runtime {runtime!r} in manifest.json")


def read_inputs(path, specs, seed):
    """The samples to run: a list of per-sample input lists (one sample unless the .npz holds several)."""
    if path is None:  # float noise in [0, 1); integer inputs get it quantized by the runtime wrapper
        rng = np.random.default_rng(seed)
        return [[rng.random([d or 1 for d in s["shape"]]).astype(np.float32) for s in specs]]
    data = np.load(path, allow_pickle=False)
    if isinstance(data, np.ndarray):
        if len(specs) != 1:
            sys.exit(f"run.py: the model has {len(specs)} inputs; give an .npz keyed by input name")
        return [_check(specs, [data])]
    prefixes = sorted({k.split(":", 1)[0] for k in data.files if ":" in k and k.split(":", 1)[0].isdigit()}, key=int)
    if prefixes:
        return [_check(specs, _pick(specs, data, p + ":")) for p in prefixes]
    return [_check(specs, _pick(specs, data, ""))]


def _pick(specs, data, prefix):
    keys = [k for k in data.files if k.startswith(prefix)] if prefix else list(data.files)
    missing = [s["name"] for s in specs if prefix + s["name"] not in data.files]
    arrays = [data[prefix + s["name"]] for s in specs] if not missing else [data[k] for k in keys]
    if len(arrays) != len(specs):
        sys.exit("run.py: input .npz lacks {}".format(", ".join(prefix + m for m in missing)))
    return arrays


def _check(specs, arrays):
    for spec, array in zip(specs, arrays):
        if list(array.shape) != list(spec["shape"]):
            sys.exit(
                "run.py: input {} has shape {}, the model wants {}".format(
                    spec["name"], list(array.shape), spec["shape"]
                )
            )
    # Float data for an integer input stays float here: the runtime wrapper quantizes it with the tensor's params.
    return [
        a
        if np.dtype(s["dtype"]).kind in "iu" and a.dtype.kind == "f"
        else np.require(a, dtype=s["dtype"], requirements="C")
        for s, a in zip(specs, arrays)
    ]


def counted(invoke, count, warmup):
    """Run ``invoke`` ``warmup`` times, then ``count`` times as one block: the counted region under the plugin.

    The garbage collector is collected and paused first, so that it cannot run inside, and the
    warm-up comes after that collection (the first calls after it allocate afresh). An empty region
    comes first: it measures what the markers themselves cost, which the counter subtracts.
    Returns the block's wall time in seconds (the clock is read outside the region).
    """
    import gc

    marker = None
    if os.environ.get("EDGEPACK_COUNT") == "1":
        import ctypes

        marker = ctypes.CDLL(None).syscall
    gc.collect()
    gc.disable()
    try:
        for _ in range(warmup):
            invoke()
        if marker is not None:
            marker(ROI_BEGIN)
            marker(ROI_END)
        start = time.perf_counter()
        if marker is not None:
            marker(ROI_BEGIN)
        for _ in range(count):
            invoke()
        if marker is not None:
            marker(ROI_END)
        return time.perf_counter() - start
    finally:
        gc.enable()


def progress(done, total):
    """``edgepack-progress DONE/TOTAL`` on stderr (with EDGEPACK_PROGRESS=1): the host shows how far it is."""
    if os.environ.get("EDGEPACK_PROGRESS") == "1":
        print(f"edgepack-progress {done}/{total}", file=sys.stderr, flush=True)


def main(argv=None):
    args = parser().parse_args(argv)
    verified, manifest = VERIFIED if argv is None and VERIFIED is not None else verify(argv)
    if manifest is None:
        with open(os.path.join(HERE, "manifest.json")) as fh:
            manifest = json.load(fh)
    model = load(manifest, args.threads, args.precision)
    samples = read_inputs(args.input, manifest["inputs"], args.seed)
    cold = args.count_first
    count = 0 if cold else args.count  # inferences of the counted block after the samples
    counted_n = 1 if cold else args.count  # inferences counted in all
    total = len(samples) + args.warmup + (count if count > 0 else args.runs)
    results, block_s = [], None
    if cold:  # the first sample's inference is the counted one: nothing runs before it
        model.set_inputs(samples[0])
        block_s = counted(model.invoke, 1, 0)
        results.append(model.outputs())
        progress(1, total)
    for feeds in samples[len(results) :]:  # every sample's outputs; they warm the runtime up too
        results.append(model(feeds))
        progress(len(results), total)
    model.set_inputs(samples[0])
    if count > 0:
        block_s = counted(model.invoke, count, args.warmup)
    for _ in range(args.warmup if count == 0 else 0):
        model.invoke()
    progress(len(samples) + args.warmup + count, total)
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        model.invoke()
        times.append((time.perf_counter() - start) * 1e3)
        progress(len(samples) + args.warmup + count + len(times), total)
    if args.output:
        names = [o["name"] for o in manifest["outputs"]]
        many = args.input is not None and _is_multi(args.input)
        arrays = {
            (f"{i}:{n}" if many else n): np.asarray(o)
            for i, outputs in enumerate(results)
            for n, o in zip(names, outputs)
        }
        np.savez(args.output, **arrays)  # type: ignore[arg-type]  # numpy stub types **kwds as allow_pickle
    if args.report:
        report = {
            "runtime": manifest["runtime"]["name"],
            "runtime_version": str(model.version),
            "numpy_version": np.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "threads": args.threads,
            "runs": args.runs,
            "warmup": args.warmup,
            "count": counted_n,
            "count_first": cold,
            "samples": len(samples),
            "latency_ms": times,
            "count_ms": None if block_s is None else block_s * 1e3 / counted_n,
            "delegation": model.delegation(),
            "verification": verified,
        }
        with open(args.report, "w") as fh:
            json.dump(report, fh, indent=2, default=str)
    return 0


def _is_multi(path):
    if not path.endswith(".npz"):
        return False
    with np.load(path, allow_pickle=False) as data:
        return any(":" in k and k.split(":", 1)[0].isdigit() for k in data.files)


if __name__ == "__main__":
    sys.exit(main())
