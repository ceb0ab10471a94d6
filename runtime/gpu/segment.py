"""The VB-Net cascade on the device (runtime.segment, step for step).

Pooling kernels write the coarse input and the fine crop straight into the
engines' input buffers. The one read-back is the coarse regions' bounding box
(six integers): the fine crop's slice count sets the fine engine's input shape.
"""

from __future__ import annotations

import numpy as np

from ..regions import FIRST_REGION_CLASS
from ..segment import MIN_COMPONENT_FRACTION, fine_window
from .device import Buffer
from .interfaces import Device, DeviceEngine
from .preprocess import label_components


def segment_on_device(device: Device, image: Buffer, coarse: DeviceEngine,
                      fine: DeviceEngine) -> tuple[Buffer, tuple[slice, slice, slice]]:
    """Labels (uint8, model grid) and the model-grid box the fine model labelled."""
    nz, ny, nx = image.shape
    cs, fs = coarse.card.input_stride, fine.card.input_stride
    cy, cx = ny // cs, nx // cs
    c_in = coarse.input_buffer((1, 1, _padded(nz, coarse.card.z_multiple), cy, cx))
    oz, oy, ox = c_in.shape[2:]
    device.launch("pool_mean", c_in.size, src=image, nz=nz, ny=ny, nx=nx, f=cs, z0=0, y0=0, x0=0, vz=nz, vy=cy,
                  vx=cx, fill=-1.0, out=c_in, oz=oz, oy=oy, ox=ox)
    c_classes = _classes(device, coarse, c_in)

    zmin, zmax, ymin, ymax, xmin, xmax = _region_box(device, c_classes, nz, cy, cx)

    labels = device.empty((nz, ny, nx), np.uint8)
    if zmax < 0:                         # no region found: brain / background from the coarse pass only
        device.launch("compose_labels", labels.size, coarse=c_classes, cy=cy, cx=cx, cs=cs, fine=c_classes,
                      fy=1, fx=1, fs=1, bz0=0, bz1=0, by0=0, by1=0, bx0=0, bx1=0, centre=(nx - 1) / 2,
                      labels=labels, nz=nz, ny=ny, nx=nx)
        return labels, (slice(0, 0),) * 3
    fx, fy = fine.card.fine_crop_xy
    z0, z1, y0, x0 = fine_window((zmin, zmax, ymin, ymax, xmin, xmax), image.shape, cs, fs, (fx, fy))
    py, px = min(fy, ny // fs - y0), min(fx, nx // fs - x0)
    f_in = fine.input_buffer((1, 1, _padded(z1 - z0, fine.card.z_multiple), fy, fx))
    oz, oy, ox = f_in.shape[2:]
    device.launch("pool_mean", f_in.size, src=image, nz=nz, ny=ny, nx=nx, f=fs, z0=z0, y0=y0, x0=x0, vz=z1 - z0,
                  vy=py, vx=px, fill=-1.0, out=f_in, oz=oz, oy=oy, ox=ox)
    f_classes = _classes(device, fine, f_in, mirror_average=True)
    box_zyx = (slice(z0, z1), slice(y0 * fs, (y0 + py) * fs), slice(x0 * fs, (x0 + px) * fs))
    device.launch("compose_labels", labels.size, coarse=c_classes, cy=cy, cx=cx, cs=cs, fine=f_classes,
                  fy=fy, fx=fx, fs=fs, bz0=z0, bz1=z1, by0=box_zyx[1].start, by1=box_zyx[1].stop,
                  bx0=box_zyx[2].start, bx1=box_zyx[2].stop, centre=(nx - 1) / 2, labels=labels, nz=nz, ny=ny, nx=nx)
    return labels, box_zyx


def _region_box(device: Device, classes: Buffer, nz: int, ny: int, nx: int) -> tuple[int, ...]:
    """Inclusive box of the significant region components (runtime.segment.significant_regions),
    read back to the host: the one sync inside the device pipeline."""
    n = nz * ny * nx                                   # the valid slices lead the padded buffer
    mask = device.empty((nz, ny, nx), np.uint8)
    device.launch("classes_at_least", n, classes=classes, n=n, min_class=FIRST_REGION_CLASS, out=mask)
    labels, sizes = label_components(device, mask)
    largest = device.empty((1,), np.uint32)
    box = device.empty((6,), np.int32)
    device.fill(largest)
    device.launch("largest_size", n, lab=labels, size=sizes, n=n, largest=largest)
    device.launch("box_reset", 1, box=box)
    device.launch("component_box", nz * ny, lab=labels, size=sizes, largest=largest,
                  fraction=MIN_COMPONENT_FRACTION, nz=nz, ny=ny, nx=nx, box=box)
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
        device.launch("flip_x", x.size // 2, v=x, rows=x.size // nx, nx=nx)
        prob = engine.run_device({name_in: x})[name_out]
        device.launch("add_flipped_x", first.size, acc=first, v=prob, rows=first.size // nx, nx=nx)
        prob = first
    _, n_classes, *spatial = prob.shape
    classes = device.empty(tuple(spatial), np.uint8)
    n = int(np.prod(spatial))
    device.launch("argmax_classes", n, logits=prob, C=n_classes, n=n, out=classes)
    return classes


def _padded(n: int, multiple: int) -> int:
    return n + (-n) % multiple
