from __future__ import annotations

import numpy as np

from runtime.segment import fine_window, significant_regions


def test_specks_do_not_move_the_fine_crop():
    """Two hemispheres' regions plus a stray speck at the skull base: the speck is dropped, so the
    fine crop's slices and corner come from the regions alone."""
    regions = np.zeros((20, 56, 48), bool)
    regions[6:16, 20:40, 8:20] = True                 # right hemisphere regions
    regions[6:16, 20:40, 28:40] = True                # left
    speck = regions.copy()
    speck[0, 2:4, 2:4] = True
    kept = significant_regions(speck)
    np.testing.assert_array_equal(kept, regions)

    def window(mask):
        zz, yy, xx = np.nonzero(mask)
        return fine_window((zz.min(), zz.max(), yy.min(), yy.max(), xx.min(), xx.max()), (20, 224, 192), 4, 2, (80, 88))

    assert window(kept) == window(regions) == (5, 17, 16, 8)
    assert window(speck) != window(regions)
    assert not significant_regions(np.zeros((3, 4, 4), bool)).any()
