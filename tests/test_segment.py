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


def test_an_atrophic_head_the_first_registration_misfits_is_scored_with_a_warning(shared_data, scorer, tmp_path):
    """The elderly twin of held-out study 200019: its sulci hold the first registration in a wrong
    optimum (template similarity 0.06, under the floor, so it was refused), while its young twin fits
    at 0.18. The coarser second try fits it; the report says so."""
    from export import synth
    phantom = synth.load_phantom(shared_data)
    spec = synth.draw_spec(200019, pose="scanner", elderly=True)
    case = synth.make_case(phantom, spec)
    grid, shape = synth.scanner_grid(spec)
    hu, _ = synth.render(phantom, case, grid, shape, with_labels=False)
    synth.write_study(tmp_path / "elderly.nii.gz", hu, grid)
    res = scorer.score(tmp_path / "elderly.nii.gz")
    assert res.metadata["template_similarity"] >= 0.08
    assert any("second, coarser try" in w for w in res.warnings)
    assert abs(res.score.aspects - case.aspects) <= 1
