"""Service files shipped with the site, written exactly as a PSP would upload them.

Each is plain service source (``process(pkt)`` against :mod:`pcsite_lite.api`); load one with
:func:`source` and deploy it with ``Site.deploy(psp, name, source(...))``.
"""

from __future__ import annotations

from importlib import resources

__all__ = ["source"]


def source(name: str) -> str:
    """The source text of the shipped service ``name`` (e.g. ``"source_routing"``)."""
    return resources.files(__package__).joinpath(f"{name}.py").read_text(encoding="utf-8")
