"""lowlight: enhance dark, underexposed photos with published low-light models.

The small public API is lazy so that ``import lowlight_cli`` stays cheap (no torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lowlight_cli.constants import VERSION as __version__

if TYPE_CHECKING:  # pragma: no cover
    from lowlight_cli.engine import Enhancer

__all__ = ["__version__", "enhance_array", "load_enhancer"]


def load_enhancer(model: str = "neid", **kwargs: Any) -> Enhancer:
    """Build an :class:`~lowlight_cli.engine.Enhancer` for ``model`` (see ``lowlight models``)."""
    from lowlight_cli.engine import Enhancer

    return Enhancer.create(model, **kwargs)


def enhance_array(image: Any, model: str = "neid", **kwargs: Any) -> Any:
    """Enhance an ``(H, W, 3)`` float32 RGB array in ``[0, 1]``; returns the same layout."""
    return load_enhancer(model, **kwargs).enhance(image)
