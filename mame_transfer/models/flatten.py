"""One flat functional graph from a Keras model with nested sub-models (ConvNeXt's stem and downsampling blocks).

The package addresses backbone layers by name (freezing by block, the prefix cache's cut, Grad-CAM, CKA), which
needs every layer at the top level of the model: :func:`flatten_model` inlines nested ``Sequential`` models.
"""

from __future__ import annotations

from mame_transfer.core.errors import ConfigError


def flatten_model(model, *, rename: dict[str, str] | None = None):
    """The same network as one flat functional graph: nested ``Sequential`` sub-models are inlined layer by layer.

    Every layer is re-created from its config and given the original's weights (a re-called layer would keep its
    old graph node as well, which the prefix cache would count as a second tensor crossing a cut). ``rename``
    gives layers new names (ConvNeXt's last LayerNormalization has an automatic, session-dependent one).
    """
    import keras

    rename = rename or {}
    if not any(isinstance(layer, keras.Model) for layer in model.layers) and not rename:
        return model
    pairs = []

    def fresh(layer):
        config = layer.get_config()
        config["name"] = rename.get(layer.name, layer.name)
        new = layer.__class__.from_config(config)
        pairs.append((new, layer))
        return new

    def inline(op):
        if isinstance(op, keras.Sequential):
            parts = [fresh(layer) for layer in op.layers]

            def call(x, *args, **kwargs):
                for part in parts:
                    x = part(x)
                return x

            return call
        return fresh(op)

    inputs = keras.Input(shape=model.inputs[0].shape[1:], dtype=model.inputs[0].dtype)
    try:
        outputs = model._run_through_graph(inputs, operation_fn=inline)
    except AttributeError as exc:  # pragma: no cover - private Keras API moved
        raise ConfigError(f"cannot flatten {model.name}: this Keras version lacks Functional._run_through_graph") from exc
    flat = keras.Model(inputs, outputs, name=model.name)
    for new, old in pairs:
        if getattr(old, "weights", None):  # layers; plain operations (``x + y``) hold none
            new.set_weights(old.get_weights())
    return flat
