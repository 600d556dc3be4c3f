"""The feature store: embeddings + metadata per split with a manifest, its export and the Projector files.

* :mod:`.store`: the format (:class:`~.store.FeatureStore`, :func:`~.store.load_store`, :func:`~.store.write_store`).
* :mod:`.export`: streaming, resumable export from a registry backbone or a finished run.
* :mod:`.projector`: TSV files for the TensorBoard Embedding Projector.
"""

from mame_transfer.store.store import FeatureStore, load_store, write_store

# (the export function is mame_transfer.store.export.export: a package attribute named "export" would hide the
# module of that name)
__all__ = ["FeatureStore", "load_store", "write_store"]
