"""The classifiers compared, their grids, and saving / loading a fitted pipeline with skops (no pickle)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from mame_transfer.core.errors import ConfigError, DataError
from mame_transfer.core.fileio import atomic_path

CLASSIFIERS = ("linear_svc", "svc_rbf", "svc_sigmoid", "logreg", "knn", "random_forest", "voting")


def _estimators(seed: int = 0) -> dict[str, Callable]:
    from sklearn.ensemble import RandomForestClassifier, VotingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.svm import SVC, LinearSVC

    def voting():
        # Soft voting needs probabilities from every member; SVC gets them by Platt scaling.
        return VotingClassifier([
            ("logreg", LogisticRegression(C=0.1, max_iter=2000)),
            ("svc", SVC(kernel="rbf", C=1.0, probability=True, random_state=seed)),
            ("knn", KNeighborsClassifier(n_neighbors=10, weights="distance")),
            ("rf", RandomForestClassifier(n_estimators=200, random_state=seed, n_jobs=1)),
        ], voting="soft")

    return {
        "linear_svc": lambda: LinearSVC(C=1.0, max_iter=5000, random_state=seed),
        "svc_rbf": lambda: SVC(kernel="rbf", random_state=seed),
        "svc_sigmoid": lambda: SVC(kernel="sigmoid", random_state=seed),
        "logreg": lambda: LogisticRegression(max_iter=2000),
        "knn": lambda: KNeighborsClassifier(),
        "random_forest": lambda: RandomForestClassifier(n_estimators=200, random_state=seed, n_jobs=1),
        "voting": voting,
    }


# Small grids (3-fold CV on train). ``fast`` grids: one or two values, for tests and the notebook.
GRIDS = {
    "linear_svc": {"clf__C": [0.001, 0.01, 0.1, 1.0]},
    "svc_rbf": {"clf__C": [1.0, 10.0, 100.0], "clf__gamma": ["scale", 0.1]},
    "svc_sigmoid": {"clf__C": [0.1, 1.0, 10.0], "clf__gamma": ["scale", 0.01]},
    "logreg": {"clf__C": [0.01, 0.1, 1.0]},
    "knn": {"clf__n_neighbors": [5, 10, 20], "clf__weights": ["uniform", "distance"]},
    "random_forest": {"clf__max_depth": [None, 20], "clf__max_features": ["sqrt", 0.3]},
    "voting": {},
}

FAST_GRIDS = {
    "linear_svc": {"clf__C": [0.01, 1.0]},
    "svc_rbf": {"clf__C": [1.0, 10.0]},
    "svc_sigmoid": {"clf__C": [0.1, 1.0]},
    "logreg": {"clf__C": [0.1, 1.0]},
    "knn": {"clf__n_neighbors": [5, 10]},
    "random_forest": {"clf__max_depth": [None]},
    "voting": {},
}


# Fixed settings of the fast mode (fewer trees), applied without search.
FAST_FIXED = {"random_forest": {"clf__n_estimators": 50}, "voting": {"clf__rf__n_estimators": 50}}


def classifier_pipeline(name: str, seed: int = 0):
    """``StandardScaler`` + the named classifier (one of :data:`CLASSIFIERS`)."""
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    est = _estimators(seed)
    if name not in est:
        raise ConfigError(f"unknown classifier {name!r}. Choose from: {', '.join(CLASSIFIERS)}")
    return Pipeline([("scale", StandardScaler()), ("clf", est[name]())])


def save_pipeline(model, path: str | Path) -> Path:
    """Save a fitted pipeline with skops (no pickle)."""
    import skops.io as sio

    with atomic_path(path) as tmp:
        sio.dump(model, tmp)
    return Path(path)


def load_pipeline(path: str | Path):
    """Load a pipeline written by :func:`save_pipeline`, trusting only the types skops reports for this file."""
    import skops.io as sio

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    untrusted = sio.get_untrusted_types(file=path)
    unexpected = [t for t in untrusted if not t.startswith(("sklearn.", "numpy."))]
    if unexpected:
        raise DataError(f"{path} holds types outside scikit-learn/numpy: {unexpected}; refusing to load")
    return sio.load(path, trusted=untrusted)

