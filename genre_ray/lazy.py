"""Lazy package attributes (PEP 562): a package names what it exports, and the module behind a name is imported on
its first use.

Ray imports a function's or actor's module, and so its package, in every process that runs it; a package whose
`__init__` imported its heavy modules (torch, transformers, lance_ray) would make every such process pay for them.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any


def lazy_attributes(package: str, modules: dict[str, str]) -> Callable[[str], Any]:
    """A module-level `__getattr__` for `package`: `modules` maps an exported name to its submodule."""

    def __getattr__(name: str) -> Any:
        if name in modules:
            return getattr(import_module(f"{package}.{modules[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
