"""Training-time constants that become the model cards' contract.

The runtime never imports this: it reads the same numbers back from the cards.
"""

GRID_SPACING_MM = (0.5, 0.5)          # paper: 0.5 x 0.5 mm in-plane
GRID_SHAPE_XY = (384, 448)            # 192 x 224 mm field of view around the aligned head
MIN_SLICE_MM = 4.0                    # thinner series are averaged into slabs...
REFORMAT_SLICE_MM = 5.0               # ...of about 5 mm
WINDOW = (30.0, 60.0)                 # level, width (HU): the paper's stroke window
COARSE_STRIDE = 4                     # coarse VB-Net at 2 mm in-plane
FINE_STRIDE = 2                       # fine VB-Net at 1 mm in-plane
FINE_CROP_XY = (160, 176)             # fine VB-Net input (x, y) at 1 mm
CLASSIFIER_CROP = (7, 130, 110)       # DA-Net patch (z, y, x) at 0.5 mm, from the authors' release
SEED = 20221101


def grid_spec():
    """The model grid these constants describe, as the runtime reads it from a card."""
    from runtime.modelcard import GridSpec
    return GridSpec(GRID_SPACING_MM, GRID_SHAPE_XY, MIN_SLICE_MM, REFORMAT_SLICE_MM)
