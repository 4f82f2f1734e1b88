"""The model families, by the name used on the command line."""

from __future__ import annotations

from dataclasses import fields

from ..errors import SsvaeError
from .auxiliary import AuxiliaryConfig, AuxiliaryDGM
from .m1 import M1, M1Config
from .m1m2 import M1M2, M1M2Config
from .m2 import M2, M2Config

# ADGM and SDGM share one class; their configs differ in ``skip``, which the run's config keeps.
REGISTRY = {"m1": (M1, M1Config), "m2": (M2, M2Config), "m1m2": (M1M2, M1M2Config),
            "adgm": (AuxiliaryDGM, AuxiliaryConfig), "sdgm": (AuxiliaryDGM, AuxiliaryConfig)}
# The families that are one classifier trained end to end (M1+M2 trains M1 first; M1 has no classes).
CLASSIFIERS = ("m2", "adgm", "sdgm")


def build_model(name: str, **options):
    """A fresh model of family ``name``; ``options`` override its config's defaults."""
    model_class, config_class = REGISTRY[name]
    known = {f.name for f in fields(config_class)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise SsvaeError(f"model {name} has no option {', '.join(unknown)}; it has {', '.join(sorted(known))}")
    if name in ("adgm", "sdgm"):  # one class for both: the name decides which
        if options.setdefault("skip", name == "sdgm") != (name == "sdgm"):
            raise SsvaeError(f"model {name}: skip={options['skip']} would build the other one; leave skip out")
    return model_class(config_class(**options))
