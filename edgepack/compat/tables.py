"""The operator tables in ``edgepack/compat/data``, loaded into frozen values.

A table file has a ``[meta]`` table (what it covers and where it came from)
and an ``[ops]`` table with any of: ``supported`` / ``unsupported`` /
``unknown`` (lists of op names), ``versions`` (TFLite builtin -> [min, max]
op version with a kernel) and ``opsets`` (ONNX op -> [first] or [first, last]
opset with a kernel). ONNX ops outside ai.onnx are written ``domain.OpType``.
The measured ONNX tables (:mod:`edgepack.compat.measured`) add ``wrong_results``
(ops that ran only with unexpected outputs) and ``ran_opsets`` (op -> opsets of
the test models that ran).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from edgepack.errors import InternalError


@dataclass(frozen=True)
class OpTable:
    """One operator table: what a runtime (or converter) of one version can run."""

    name: str
    meta: Mapping[str, Any]
    supported: frozenset[str] = frozenset()
    unsupported: frozenset[str] = frozenset()
    unknown: frozenset[str] = frozenset()
    versions: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    opsets: Mapping[str, tuple[int, int | None]] = field(default_factory=dict)
    wrong_results: frozenset[str] = frozenset()
    ran_opsets: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def tool(self) -> str:
        """The runtime and version the table describes, e.g. ``tflite-runtime 2.14.0``."""
        if "measured_with" in self.meta:
            return str(self.meta["measured_with"])
        return f"{self.meta.get('runtime', self.name)} {self.meta.get('version', '')}".strip()

    @property
    def provenance(self) -> str:
        """How the table was made: ``measured`` or ``transcribed``/``derived`` from its source."""
        if "measured_with" in self.meta:
            return f"measured with {self.meta['measured_with']}"
        return f"{self.meta.get('method', 'transcribed')} from {self.meta.get('source', 'unknown source')}"

    def has(self, op: str) -> bool:
        """True when the table lists ``op`` as runnable."""
        return op in self.supported or op in self.versions or op in self.opsets


def available() -> list[str]:
    """Names of the tables shipped with edgepack."""
    folder = resources.files("edgepack.compat").joinpath("data")
    return sorted(p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml"))


@cache
def load_table(name: str) -> OpTable:
    """Load table ``name`` (the data file's stem, e.g. ``tensorrt_8.5``).

    Raises:
        InternalError: the table is missing or malformed (a packaging bug).
    """
    resource = resources.files("edgepack.compat").joinpath("data", f"{name}.toml")
    try:
        data = tomllib.loads(resource.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InternalError(f"operator table {name!r} is missing or malformed ({exc}).") from exc
    ops = data.get("ops", {})
    return OpTable(
        name=name,
        meta=dict(data.get("meta", {})),
        supported=frozenset(ops.get("supported", ())),
        unsupported=frozenset(ops.get("unsupported", ())),
        unknown=frozenset(ops.get("unknown", ())),
        versions={k: (int(v[0]), int(v[1])) for k, v in ops.get("versions", {}).items()},
        opsets={k: (int(v[0]), int(v[1]) if len(v) > 1 else None) for k, v in ops.get("opsets", {}).items()},
        wrong_results=frozenset(ops.get("wrong_results", ())),
        ran_opsets={k: tuple(int(x) for x in v) for k, v in ops.get("ran_opsets", {}).items()},
    )


def merge(name: str, *tables: OpTable) -> OpTable:
    """One table that lists what any of ``tables`` lists (e.g. ai.onnx ops plus custom domains)."""
    return OpTable(
        name=name,
        meta=dict(tables[0].meta),
        supported=frozenset().union(*(t.supported for t in tables)),
        unsupported=frozenset().union(*(t.unsupported for t in tables)),
        unknown=frozenset().union(*(t.unknown for t in tables)),
        versions={k: v for t in tables for k, v in t.versions.items()},
        opsets={k: v for t in tables for k, v in t.opsets.items()},
        wrong_results=frozenset().union(*(t.wrong_results for t in tables)),
        ran_opsets={k: v for t in tables for k, v in t.ran_opsets.items()},
    )
