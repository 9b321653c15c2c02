"""PyTorch sources: reading a ``.pt2`` program, a trusted TorchScript or pickled module, or a live ``nn.Module``.

A ``.pt2`` (``torch.export.save``) holds a graph and its weights and is read with
``torch.export.load``, which runs no code from the file. A TorchScript archive or a
``torch.save`` pickle (``.pt``/``.pth``) runs code when loaded: it is refused unless the
user trusts it (``--trust-model-code``). Nothing here downloads anything.

A live module given to :func:`edgepack.package` is written with :func:`save_live` (a pickle
of the module and its example inputs, made by this process) and read back trusted.
"""

from __future__ import annotations

import inspect
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgepack.artifact import Artifact, Layout, ModelFormat, TensorSpec, guess_layout
from edgepack.errors import ModelError
from edgepack.tools import first_line

EXPORTED, TORCHSCRIPT, PICKLE, LIVE = "exported-program", "torchscript", "pickle", "live-module"
_LIVE_KEY = "edgepack_live_module"
_TRUST_HINT = (
    "Pass --trust-model-code (trust_code=True) only if you trust its author, or save a torch.export program "
    "instead: torch.export.save(torch.export.export(model, (x,)), 'model.pt2')."
)


@dataclass(frozen=True)
class TorchSource:
    """A loaded PyTorch model, ready to run and to export.

    Attributes:
        kind: "exported-program", "torchscript", "pickle" or "live-module".
        module: What PyTorch runs (the program's module for a ``.pt2``).
        program: The ``torch.export.ExportedProgram`` of a ``.pt2`` (None otherwise).
        example_inputs: Example inputs when the file holds them (a ``.pt2``, a live module), else ().
        input_names: The forward's input names, in order.
    """

    kind: str
    module: Any
    program: Any
    example_inputs: tuple[Any, ...]
    input_names: tuple[str, ...]


def zip_kind(names: set[str]) -> str | None:
    """What a zip archive's member names say it is: a ``.pt2``, TorchScript, a torch.save pickle, or None."""
    bare = {n.split("/", 1)[1] if "/" in n else n for n in names}
    if "archive_format" in bare or "models/model.json" in bare or "serialized_exported_program.json" in bare:
        return EXPORTED
    if any(n.startswith("code/") for n in bare) and "data.pkl" in bare:
        return TORCHSCRIPT
    if "data.pkl" in bare:
        return PICKLE
    return None


def file_kind(path: Path) -> str:
    """The kind of a PyTorch file from its content (a bare pickle is "pickle")."""
    try:
        with zipfile.ZipFile(path) as zf:
            return zip_kind(set(zf.namelist())) or PICKLE
    except (zipfile.BadZipFile, OSError):
        return PICKLE


def refuse_untrusted(path: Path, kind: str) -> ModelError:
    """The error for a TorchScript or pickled PyTorch file loaded without trust."""
    what = "a TorchScript archive" if kind == TORCHSCRIPT else "a pickled PyTorch file"
    return ModelError(
        f"{path} is {what} (PyTorch); loading it runs code from the file, and edgepack never loads pickles or "
        "TorchScript without --trust-model-code.",
        hint=_TRUST_HINT,
    )


def _torch() -> Any:
    from edgepack.deps import require

    return require("torch")


def load(path: str | Path, *, trust_code: bool = False) -> TorchSource:
    """Load a PyTorch file (never downloading anything).

    Raises:
        ModelError: the file is TorchScript or a pickle and ``trust_code`` is False, or it cannot be read,
            or it holds no module (e.g. a state dict).
        MissingDependencyError: torch is not installed (``pip install 'edgepack[torch]'``).
    """
    path = Path(path)
    kind = file_kind(path)
    if kind != EXPORTED and not trust_code:
        raise refuse_untrusted(path, kind)
    torch = _torch()
    try:
        if kind == EXPORTED:
            program = torch.export.load(str(path))
            args = tuple(program.example_inputs[0]) if program.example_inputs else ()
            names = tuple(program.graph_signature.user_inputs)
            return TorchSource(EXPORTED, program.module(), program, args, names)
        if kind == TORCHSCRIPT:
            module = torch.jit.load(str(path), map_location="cpu").eval()
            return TorchSource(TORCHSCRIPT, module, None, (), _forward_names(module))
        loaded = torch.load(str(path), map_location="cpu", weights_only=False)
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - any loader failure is an unreadable model
        raise ModelError(
            f"PyTorch cannot load {path} ({first_line(exc)}).", hint="Check that the file is complete."
        ) from exc
    return _from_pickle(path, loaded, torch)


def _from_pickle(path: Path, loaded: Any, torch: Any) -> TorchSource:
    if isinstance(loaded, dict) and loaded.get(_LIVE_KEY):
        module, args = loaded["module"], tuple(loaded["example_inputs"])
        return TorchSource(LIVE, module.eval(), None, args, _forward_names(module))
    if not isinstance(loaded, torch.nn.Module):
        raise ModelError(
            f"{path} holds a {type(loaded).__name__} (e.g. a state dict), not a model.",
            hint="Build the module, load the weights into it, and pass it to edgepack.package(module, "
            "example_inputs=(x,)), or save a torch.export program (.pt2).",
        )
    return TorchSource(PICKLE, loaded.eval(), None, (), _forward_names(loaded))


def _forward_names(module: Any) -> tuple[str, ...]:
    try:
        schema = module.forward.schema  # TorchScript: arguments after self
        return tuple(a.name for a in schema.arguments[1:])
    except AttributeError:
        pass
    params = inspect.signature(module.forward).parameters.values()
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return tuple(p.name for p in params if p.kind in kinds)


def save_live(module: Any, example_inputs: Sequence[Any], folder: Path) -> Path:
    """Write a live module and its example inputs where the pipeline reads models (a trusted pickle of ours).

    Raises:
        UsageError: ``module`` is not a ``torch.nn.Module``, or ``example_inputs`` are not tensors.
        ModelError: the module cannot be pickled (a class defined inside a function).
    """
    from edgepack.errors import UsageError

    torch = _torch()
    if not isinstance(module, torch.nn.Module):
        raise UsageError(
            f"model must be a path or a torch.nn.Module, got {type(module).__name__}.",
            hint="Pass a model file or an nn.Module with example_inputs=(x,).",
        )
    args = tuple(example_inputs or ())
    if not args or not all(isinstance(a, torch.Tensor) for a in args):
        raise UsageError(
            "a torch.nn.Module needs example_inputs: a tuple of tensors of the shapes to package for.",
            hint="Call edgepack.package(module, example_inputs=(torch.randn(1, 3, 224, 224),), targets=[...]).",
        )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{type(module).__name__}.pt"
    payload = {_LIVE_KEY: True, "module": module.eval(), "example_inputs": tuple(a.detach().cpu() for a in args)}
    try:
        torch.save(payload, str(path))
    except Exception as exc:  # noqa: BLE001 - pickling a local class, a lambda, an open file...
        raise ModelError(
            f"the module {type(module).__name__} cannot be saved for packaging ({first_line(exc)}).",
            hint="Define its class at module level (not inside a function), or export it with torch.export.save "
            "to a .pt2 and package that file.",
        ) from exc
    return path


# --------------------------------------------------------------------------- specs and runs


def _spec(name: str, value: Any) -> TensorSpec:
    """A TensorSpec from a tensor or a FakeTensor (a symbolic dim becomes None); PyTorch's 4-D tensors are NCHW."""
    dims = tuple(d if isinstance(d, int) else None for d in value.shape)
    dtype = str(value.dtype).removeprefix("torch.")
    return TensorSpec(name=name, shape=dims, dtype=dtype, layout=Layout.NCHW if len(dims) == 4 else guess_layout(dims))


def input_layouts(source: Artifact, artifact: Artifact) -> list[str]:
    """The layout of each of ``artifact``'s inputs, known rather than guessed when the source is PyTorch.

    A PyTorch source's 4-D inputs are NCHW: an artifact input of the source's shape is NCHW, one of its
    NHWC permutation (a converter moved the channels last) is NHWC. Inputs of other sources, and inputs
    that match neither, keep the layout their spec records.
    """
    if source.format is not ModelFormat.TORCH:
        return [spec.layout.value for spec in artifact.inputs]
    layouts = []
    for spec, origin in zip(artifact.inputs, [*source.inputs, *([None] * len(artifact.inputs))], strict=False):
        shape = tuple(origin.shape) if origin is not None else ()
        if len(shape) == 4 and tuple(spec.shape) == shape:
            layouts.append(Layout.NCHW.value)
        elif len(shape) == 4 and tuple(spec.shape) == (shape[0], shape[2], shape[3], shape[1]):
            layouts.append(Layout.NHWC.value)
        else:
            layouts.append(spec.layout.value)
    return layouts


def read_io(path: str | Path, *, trust_code: bool = False) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The model's declared inputs and outputs (dims the program keeps symbolic are None).

    A ``.pt2`` declares them in its graph; a live module's example inputs give them; a TorchScript or
    pickled module declares only its input names (shapes unknown, so ``--input-shape`` must give them):
    its outputs are found by running it at the given shapes (:func:`output_specs`).
    """
    source = load(path, trust_code=trust_code)
    if source.kind == EXPORTED:
        nodes = [n for n in source.program.graph.nodes if n.op == "placeholder"]
        values = {n.name: n.meta.get("val") for n in nodes}
        inputs = [_spec(name, values[name]) for name in source.input_names]
        out_node = next(iter(source.program.graph.find_nodes(op="output")))
        outs = [a.meta.get("val") for a in out_node.args[0]]
        return inputs, [_spec(_output_name(i, len(outs)), v) for i, v in enumerate(outs)]
    if source.example_inputs:
        inputs = [_spec(n, a) for n, a in zip(source.input_names, source.example_inputs, strict=False)]
        outs = run(source, [a.numpy() for a in source.example_inputs])
        return inputs, [_spec(_output_name(i, len(outs)), o) for i, o in enumerate(outs)]
    return [TensorSpec(name=n, shape=(), dtype="float32") for n in source.input_names], []


def output_specs(source: TorchSource, inputs: Sequence[TensorSpec]) -> list[TensorSpec]:
    """The outputs' specs found by running the module on zeros of the (static) input shapes."""
    import numpy as np

    feeds = [np.zeros(tuple(d or 1 for d in spec.shape), dtype=spec.dtype) for spec in inputs]
    outs = run(source, feeds)
    return [_spec(_output_name(i, len(outs)), o) for i, o in enumerate(outs)]


def _output_name(index: int, count: int) -> str:
    return "output" if count == 1 else f"output_{index}"


def run(source: TorchSource, feeds: Sequence[Any]) -> list[Any]:
    """Run the module once on numpy feeds (positional); the outputs flattened in order, as numpy arrays.

    Raises:
        ModelError: PyTorch fails to run the module on these inputs.
    """
    torch = _torch()
    tensors = [torch.from_numpy(_contiguous(f)) for f in feeds]
    try:
        with torch.no_grad():
            result = source.module(*tensors)
    except Exception as exc:  # noqa: BLE001 - the model's own error at these inputs
        raise ModelError(f"PyTorch fails to run the model ({first_line(exc)}).") from exc
    return [t.detach().cpu().numpy() for t in flatten(result, torch)]


def flatten(result: Any, torch: Any) -> list[Any]:
    """Tensors of a nested output (tuple, list, dict values) in order."""
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, dict):
        result = list(result.values())
    if isinstance(result, (list, tuple)):
        return [t for item in result for t in flatten(item, torch)]
    raise ModelError(
        f"the model returns a {type(result).__name__}, not tensors.", hint="Return tensors (or tuples of them)."
    )


def _contiguous(array: Any) -> Any:
    import numpy as np

    return np.ascontiguousarray(array)
