"""The model families, by the name used on the command line."""

from __future__ import annotations

from dataclasses import fields

from ..errors import SsvaeError
from .m1 import M1, M1Config
from .m1m2 import M1M2, M1M2Config
from .m2 import M2, M2Config

REGISTRY = {"m1": (M1, M1Config), "m2": (M2, M2Config), "m1m2": (M1M2, M1M2Config)}


def build_model(name: str, **options):
    """A fresh model of family ``name``; ``options`` override its config's defaults."""
    model_class, config_class = REGISTRY[name]
    known = {f.name for f in fields(config_class)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise SsvaeError(f"model {name} has no option {', '.join(unknown)}; it has {', '.join(sorted(known))}")
    return model_class(config_class(**options))
