"""One study on the GPU: read (host) -> upload once -> align -> resample, strip, window ->
segment -> mirrored patches -> DA-Net, all on one stream -> read back -> density -> score.

Same stages and the same StudyResult as runtime.cpu.CpuScorer; only the place
the voxels live changes. Alignment runs on the host (about 0.2 s on a reduced copy
of the study, whatever its slice count); host round trips: the results at the end; with the region atlas (the
shipped default) the model-grid HU and brain mask come down once for the
registration, which runs on the host, and the labels go back up; with the
VB-Net cascade, only the coarse box (six integers).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import numpy as np

from ..align import align
from ..atlas import AtlasSegmenter, load_atlas
from ..classify import Classification
from ..density import measure
from ..hyperdense import find_hyperdense
from ..modelcard import DEFAULT_MODEL_DIR, ModelSet, load_model_set
from ..preprocess import Preprocessed
from ..read import Study, read_study, validate_study
from ..resample import model_grid, window
from ..result import CLASSIFIER_ROLES, StudyResult, check_brain_volume, score_study, study_result
from ..segment import Segmentation
from .interfaces import Device, DeviceEngine
from .patches import batch_on_device, host_batch
from .preprocess import preprocess_on_device
from .segment import segment_on_device


class GpuScorer:
    """Loads (building if needed) the TensorRT engines once; `gpu` and `engines` can be given
    (the tests pass a CPU emulation of both)."""

    def __init__(self, model_dir: str | os.PathLike = DEFAULT_MODEL_DIR, gpu: Device | None = None,
                 engines: dict[str, DeviceEngine] | None = None, keep_pairs: bool = False, segmenter: str = "auto",
                 ordinal: int = 0):
        self.models: ModelSet = load_model_set(model_dir)
        if gpu is None:
            from .device import CudaDevice
            cuda = CudaDevice(ordinal)
            gpu = cuda
            if engines is None:
                from .tensorrt_engine import TensorRTEngine
                engines = {c.role: TensorRTEngine(c, cuda, Path(model_dir)) for c in self.models.cards}
        if engines is None:
            raise ValueError("engines must be given with a device")
        self.gpu: Device = gpu
        self.engines = engines
        self.keep_pairs = keep_pairs
        atlas = self.models.segment_atlas
        use_atlas = atlas is not None and segmenter in ("atlas", "auto")
        self.atlas = AtlasSegmenter(load_atlas(atlas)) if atlas is not None and use_atlas else None
        self.device_label = f"gpu ({gpu.name})"
        self.on_stage: Callable[[str], None] | None = None      # told the host-visible stages (progress)

    def score(self, source: str | os.PathLike | Study) -> StudyResult:
        try:
            return self._score(source)
        finally:
            self.gpu.release()

    def _tell(self, stage: str) -> None:
        if self.on_stage is not None:
            self.on_stage(stage)

    def _score(self, source) -> StudyResult:
        dev, timings = self.gpu, dict[str, float]()
        t0 = time.perf_counter()
        self._tell("read")
        study = source if isinstance(source, Study) else read_study(source)
        if isinstance(source, Study):
            validate_study(study)
        t1 = time.perf_counter()
        study_hu = dev.put(study.hu.astype(np.float32, copy=False))
        self._tell("align")
        alignment = align(study)
        grid = model_grid(study, alignment, self.models.grid)
        t2 = time.perf_counter()
        timings.update(read=t1 - t0, align=t2 - t1)

        self._tell("preprocess")       # the device stages follow on one stream, without a host round trip
        marks = [("start", dev.event())]
        img = preprocess_on_device(dev, study_hu, study, alignment, grid, self.models.window)
        marks.append(("preprocess", dev.event()))
        template_ncc = None
        if self.atlas is not None:
            seg = self.atlas.segment(self._host_image(img, grid))
            labels, template_ncc = dev.put(seg.labels), seg.template_ncc
        else:
            labels, _ = segment_on_device(dev, img.image, self.engines["segment_coarse"],
                                          self.engines["segment_fine"])
        marks.append(("segment", dev.event()))
        staged = []
        for role in CLASSIFIER_ROLES:
            engine = self.engines[role]
            card = engine.card
            pairs = engine.input_buffer((len(card.regions), 2, 2, *card.crop))
            sums = batch_on_device(dev, img.image, labels, card.regions, pairs)
            marks.append(("batch", dev.event()))
            out = engine.run_device({card.inputs[0].name: pairs})
            marks.append(("classify", dev.event()))
            staged.append((engine, pairs, sums, out))

        # Results back to the host: what the score and the report need, nothing else.
        brain_voxels = int(dev.get(img.brain_voxels)[0])
        hu, label_map = dev.get(img.hu), dev.get(labels)
        batches, results = [], []
        for engine, pairs, sums, out in staged:
            card = engine.card
            results.append(Classification(regions=card.regions,
                                          probability=dev.get(out[card.outputs[0].name]).astype(np.float64),
                                          threshold=card.threshold))
            batches.append(host_batch(card.regions, dev.get(sums), dev.get(pairs) if self.keep_pairs else None,
                                      grid.shape, card.crop))
        marks.append(("download", dev.event()))
        for (_, a), (stage, b) in zip(marks, marks[1:]):     # device time per stage, from stream events
            timings[stage] = timings.get(stage, 0.0) + dev.elapsed_ms(a, b) / 1000.0
        timings["score"] = timings.pop("download")           # the read-back belongs to scoring

        brain_ml = check_brain_volume(study, brain_voxels * img.factor ** 2 * grid.voxel_ml)   # working -> model grid
        t5 = time.perf_counter()
        densities = measure(hu, label_map, grid, self.models.classify_density)
        hyperdense = find_hyperdense(hu, label_map, grid)
        final = score_study(batches, results, densities, self.models)
        timings["score"] += time.perf_counter() - t5
        timings["total"] = time.perf_counter() - t0          # wall clock, file in to score out
        return study_result(study, alignment, grid, hu, Segmentation(label_map, template_ncc), densities, hyperdense,
                            brain_ml, final, timings, self.models, self.device_label, tuple(results), tuple(batches))

    def _host_image(self, img, grid) -> Preprocessed:
        """The model-grid HU and brain mask on the host, for the atlas registration."""
        hu = self.gpu.get(img.hu)
        brain = self.gpu.get(img.brain).astype(bool).repeat(img.factor, axis=1).repeat(img.factor, axis=2)
        return Preprocessed(grid=grid, hu=hu, brain=brain, image=window(hu, brain, *self.models.window))
