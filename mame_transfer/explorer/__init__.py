"""The similarity explorer: nearest neighbours of a feature store as a static, offline web page.

* :mod:`.neighbours`: exact cosine neighbours, precision@k, the projection the page uses.
* :mod:`.site`: thumbnails, data files loaded on demand, the page's assets. :mod:`.serve`: a local server.
"""

from mame_transfer.explorer.site import build_site

__all__ = ["build_site"]
