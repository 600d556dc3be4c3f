"""Backbones and the flat model built on them.

* :mod:`.backbones`: the registry (one frozen :class:`~.backbones.BackboneSpec` per architecture: builder,
  ``preprocess_input``, default size, ordered blocks, feature layer, weights files) and the offline weights check.
* :mod:`.build`: one flat ``keras.Model`` with a named head, frozen by block name, BatchNormalization frozen.
* :mod:`.flatten`: nested sub-models (ConvNeXt's ``Sequential`` stem and downsampling) inlined into one graph.
"""

from mame_transfer.models.backbones import REGISTRY, BackboneSpec
from mame_transfer.models.backbones import get as get_backbone
from mame_transfer.models.build import build_model

__all__ = ["REGISTRY", "BackboneSpec", "build_model", "get_backbone"]
