"""The one progress bar of long work (pretraining, fine-tuning, the paper probe): images done, images/s and time left."""

from __future__ import annotations

from tqdm.auto import tqdm


def image_bar(total: int, desc: str, enabled: bool = True, initial: int = 0) -> tqdm:
    """A bar counted in images (k, M), redrawn at most once a second, as wide as the terminal."""
    return tqdm(
        total=total, initial=initial, unit="img", unit_scale=True, desc=desc, disable=not enabled, dynamic_ncols=True, mininterval=1.0
    )
