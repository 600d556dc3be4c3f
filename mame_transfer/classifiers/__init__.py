"""scikit-learn classifiers on a feature store: pipelines (safe to save and load), the comparison, metadata columns.

* :mod:`.estimators`: one ``StandardScaler`` + estimator pipeline per name, grids, skops save / allow-listed load.
* :mod:`.comparison`: feature sets (embeddings, + metadata, + UMAP, metadata alone), grid search on train, ranking
  on val, the comparison table and figures. :mod:`.inputs`: numeric metadata columns.
* :mod:`.similarity`: how close a task is to ImageNet (``task_similarity``).
* :mod:`.significance`: per-class F1, bootstrap confidence intervals, McNemar's test between two pipelines.
"""

from mame_transfer.classifiers.comparison import (
                                                  accuracy_figure,
                                                  build_inputs,
                                                  compare,
                                                  heatmap_figure,
                                                  source_from_dataset,
                                                  source_from_store,
                                                  write_outputs,
)
from mame_transfer.classifiers.estimators import (
                                                  CLASSIFIERS,
                                                  classifier_pipeline,
                                                  load_pipeline,
                                                  save_pipeline,
)

__all__ = ["CLASSIFIERS", "accuracy_figure", "build_inputs", "classifier_pipeline", "compare", "heatmap_figure",
           "load_pipeline", "save_pipeline", "source_from_dataset", "source_from_store", "write_outputs"]
