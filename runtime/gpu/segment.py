"""The VB-Net cascade on the device (runtime.segment, step for step).

Pooling kernels write the coarse input and the fine crop straight into the
engines' input buffers. The one read-back is the coarse regions' bounding box
(six integers): the fine crop's slice count sets the fine engine's input shape.
"""

from __future__ import annotations

import numpy as np

from ..segment import MIN_COMPONENT_FRACTION, fine_window
from .device import Buffer
from .interfaces import Device, DeviceEngine
from .preprocess import label_components

REGION_CLASS_MIN = 2        # SEG_CLASSES: 0 background, 1 brain, 2.. regions


def segment_on_device(device: Device, image: Buffer, coarse: DeviceEngine,
                      fine: DeviceEngine) -> tuple[Buffer, tuple[slice, slice, slice]]:
    """Labels (uint8, model grid) and the model-grid box the fine model labelled."""
    nz, ny, nx = image.shape
    cs, fs = coarse.card.input_stride, fine.card.input_stride
    cy, cx = ny // cs, nx // cs
    c_in = coarse.input_buffer((1, 1, _padded(nz, coarse.card.z_multiple), cy, cx))
    device.launch("pool_mean", c_in.size, image, nz, ny, nx, cs, 0, 0, 0, nz, cy, cx, -1.0, c_in, *c_in.shape[2:])
    c_classes = _classes(device, coarse, c_in)

    zmin, zmax, ymin, ymax, xmin, xmax = _region_box(device, c_classes, nz, cy, cx)

    labels = device.empty((nz, ny, nx), np.uint8)
    if zmax < 0:                         # no region found: brain / background from the coarse pass only
        device.launch("compose_labels", labels.size, c_classes, cy, cx, cs, c_classes, 1, 1, 1,
                      0, 0, 0, 0, 0, 0, (nx - 1) / 2, labels, nz, ny, nx)
        return labels, (slice(0, 0),) * 3
    fx, fy = fine.card.fine_crop_xy
    z0, z1, y0, x0 = fine_window((zmin, zmax, ymin, ymax, xmin, xmax), image.shape, cs, fs, (fx, fy))
    py, px = min(fy, ny // fs - y0), min(fx, nx // fs - x0)
    f_in = fine.input_buffer((1, 1, _padded(z1 - z0, fine.card.z_multiple), fy, fx))
    device.launch("pool_mean", f_in.size, image, nz, ny, nx, fs, z0, y0, x0, z1 - z0, py, px, -1.0, f_in,
                  *f_in.shape[2:])
    f_classes = _classes(device, fine, f_in, mirror_average=True)
    box_zyx = (slice(z0, z1), slice(y0 * fs, (y0 + py) * fs), slice(x0 * fs, (x0 + px) * fs))
    device.launch("compose_labels", labels.size, c_classes, cy, cx, cs, f_classes, fy, fx, fs,
                  z0, z1, box_zyx[1].start, box_zyx[1].stop, box_zyx[2].start, box_zyx[2].stop, (nx - 1) / 2,
                  labels, nz, ny, nx)
    return labels, box_zyx


def _region_box(device: Device, classes: Buffer, nz: int, ny: int, nx: int) -> tuple[int, ...]:
    """Inclusive box of the significant region components (runtime.segment.significant_regions),
    read back to the host: the one sync inside the device pipeline."""
    n = nz * ny * nx                                   # the valid slices lead the padded buffer
    mask = device.empty((nz, ny, nx), np.uint8)
    device.launch("classes_at_least", n, classes, n, REGION_CLASS_MIN, mask)
    labels, sizes = label_components(device, mask)
    largest = device.empty((1,), np.uint32)
    box = device.empty((6,), np.int32)
    device.fill(largest)
    device.launch("largest_size", n, labels, sizes, n, largest)
    device.launch("box_reset", 1, box)
    device.launch("component_box", nz * ny, labels, sizes, largest, MIN_COMPONENT_FRACTION, nz, ny, nx, box)
    return tuple(int(v) for v in device.get(box))


def _classes(device: Device, engine: DeviceEngine, x: Buffer, mirror_average: bool = False) -> Buffer:
    """Run a segmentation engine and argmax its probabilities into uint8 classes (padded z kept);
    `mirror_average` as runtime.segment._run (the input buffer is left mirrored)."""
    name_in, name_out = engine.card.inputs[0].name, engine.card.outputs[0].name
    prob = engine.run_device({name_in: x})[name_out]
    if mirror_average:
        nx = x.shape[-1]
        first = device.empty(prob.shape, np.float32)
        device.copy(first, prob)                      # the engine reuses its output buffer
        device.launch("flip_x", x.size // 2, x, x.size // nx, nx)
        prob = engine.run_device({name_in: x})[name_out]
        device.launch("add_flipped_x", first.size, first, prob, first.size // nx, nx)
        prob = first
    _, n_classes, *spatial = prob.shape
    classes = device.empty(tuple(spatial), np.uint8)
    n = int(np.prod(spatial))
    device.launch("argmax_classes", n, prob, n_classes, n, classes)
    return classes


def _padded(n: int, multiple: int) -> int:
    return n + (-n) % multiple
