"""Models with known answers (installed as ``ppl.models``): ``get(name)``, ``names()``."""

from ppl.models.zoo import ZooEntry, get, names, register

__all__ = ["ZooEntry", "get", "names", "register"]
