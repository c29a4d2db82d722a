"""Model families: a constructor, its split map and the layer whose input is the representation z.

Each family is a ``FamilySpec`` in ``FAMILIES`` (``registry``), written next to its model. The
language models import ``transformers`` only when one is built.
"""

from __future__ import annotations

from msfusion_core.models import cnn, llama, minilm, rescnn, resnet
from msfusion_core.models.registry import FAMILIES, FamilySpec, ModelFamily, get_family, make_family, register_family

__all__ = ["FAMILIES", "FamilySpec", "ModelFamily", "get_family", "make_family", "register_family"]

for _spec in (cnn.DIGITS_CNN, cnn.CIFAR_CNN, resnet.RESNET18, rescnn.RESCNN, llama.LLAMA, minilm.MINILM):
    register_family(_spec)
