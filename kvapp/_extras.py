"""A clear error when kvapp's optional dependencies are not installed.

``pip install raftlib`` gives raftlib alone; kvapp's dependencies come with the ``kvapp`` extra.
``import kvapp`` works either way, and the modules that need the extra say how to get it
instead of failing with a bare ``ModuleNotFoundError`` from deep inside.
"""

from __future__ import annotations

import importlib

__all__ = ["require"]


def require(*modules: str) -> None:
    """Import ``modules`` or raise an ImportError that says how to install kvapp's extra.

    Raises:
        ImportError: one of them is not installed.
    """
    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ImportError(
            f"kvapp needs {', '.join(missing)}, which come with its extra: "
            "pip install 'raftlib[kvapp]' (raftlib alone works without it)"
        )
