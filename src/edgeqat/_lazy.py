"""Package namespaces whose names are imported on first use (PEP 562).

``edgeqat.quant``, ``edgeqat.data`` and ``edgeqat.tracking`` re-export names from submodules that
pull in torch or Lightning; importing them lazily keeps the CLI's parser, ``--help`` and the light
submodules (``quant.isa``, ``tracking.secrets``) free of that cost.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str],
                 namespace: dict[str, Any]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: ``exports`` maps a name to its submodule.

    A resolved name is stored in ``namespace`` (the package's ``globals()``), so it is looked up once.
    """
    names = sorted(exports)

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return names

    return __getattr__, __dir__
