"""`keel bench --profile`: pyinstrument over one extra repetition of the in-process stages, summarised.

The summary is a flat profile — where the samples' own time went, by function and by package — which is
what the report needs to say what bounds a figure. pyinstrument is a development dependency, imported only
when profiling is asked for.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from keel.errors import ConfigurationError

__all__ = ["profiled"]

TOP = 12


def _package(path: str) -> str:
    """A frame's package: the first folder after site-packages, or Keel's top-level package."""
    parts = path.replace("\\", "/").split("/")
    if "site-packages" in parts:
        index = parts.index("site-packages")
        return parts[index + 1].split(".")[0] if index + 1 < len(parts) else "?"
    for name in ("keel", "schemas", "producers", "consumers", "projections", "deploy"):
        if name in parts:
            return name
    for index, part in enumerate(parts[:-1]):
        if part.startswith("python3"):  # the standard library: name its module (json, asyncio, …)
            return f"stdlib {parts[index + 1].removesuffix('.py')}"
    return "builtins" if path.startswith("<built-in>") or not path else path


def _walk(frame: Any, functions: dict[str, float], packages: dict[str, float]) -> None:
    own = float(frame.total_self_time)  # the time of its synthetic "[self]" children
    if own > 0:
        functions[f"{frame.function} ({frame.file_path_short}:{frame.line_no})"] += own
        packages[_package(str(frame.file_path or ""))] += own
    for child in frame.children:
        if not child.is_synthetic:
            _walk(child, functions, packages)


@contextlib.contextmanager
def profiled(into: dict[str, list[tuple[str, float]]], name: str) -> Iterator[None]:
    """Profile the block; put its top functions and its packages by self time (%) into `into`."""
    try:
        from pyinstrument import Profiler
    except ImportError as error:  # a production install has no dev extras
        raise ConfigurationError("--profile needs pyinstrument: pip install -e '.[dev]'") from error
    # A timing thread: this machine's clock costs ~5 µs a call, which would distort a pure-Python profile.
    profiler = Profiler(async_mode="disabled", interval=0.001, use_timing_thread=True)
    profiler.start()
    try:
        yield
    finally:
        session = profiler.stop()
        root = session.root_frame()
        if root is not None:
            functions: dict[str, float] = defaultdict(float)
            packages: dict[str, float] = defaultdict(float)
            _walk(root, functions, packages)
            total = sum(packages.values()) or 1.0
            into[f"{name}: packages"] = [
                (package, share / total * 100) for package, share in sorted(packages.items(), key=lambda i: -i[1])
            ][:TOP]
            into[f"{name}: functions"] = [
                (function, share / total * 100) for function, share in sorted(functions.items(), key=lambda i: -i[1])
            ][:TOP]
