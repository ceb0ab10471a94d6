"""GPU kernels and stages against the CPU implementation.

Every kernel test runs twice: on `emulated` (kernels.cu compiled as one-thread
C++, here and in CI) and on `cuda` (a real GPU; skipped with the reason where
there is none). Bounds: masks, labels, crops and classes must be identical;
HU may differ by float rounding of the interpolation (1e-3 HU), similarity by
float vs double accumulation (1e-5).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from runtime.align import Alignment, align
from runtime.gpu import kernels
from runtime.gpu.patches import batch_on_device, host_batch
from runtime.gpu.preprocess import largest_component, resample_on_device, strip_on_device, window_on_device
from runtime.modelcard import GridSpec
from runtime.patches import build_batch
from runtime.read import Study
from runtime.resample import model_grid, resample, window
from runtime.result import STAGES
from runtime.strip import brain_mask
from tests.conftest import DEMO_STUDY
from tests.gpu_emulation import EmulatedDevice, EmulatedEngine, build_library


@pytest.fixture(scope="session")
def emulated_device(tmp_path_factory):
    lib = build_library(tmp_path_factory.mktemp("kernels"))
    if lib is None:
        pytest.skip("g++ not found: cannot build the CPU emulation of the CUDA kernels")
    return EmulatedDevice(lib)


@pytest.fixture(scope="session")
def cuda_device():
    from runtime.errors import DeviceUnavailable
    try:
        from runtime.gpu.device import CudaDevice
        return CudaDevice()
    except DeviceUnavailable as exc:
        pytest.skip(f"no CUDA device here: {exc}")


@pytest.fixture(params=["emulated", "cuda"])
def device(request):
    dev = request.getfixturevalue(f"{request.param}_device")
    yield dev
    dev.release()


@pytest.fixture(scope="session")
def demo_alignment(demo_study):
    return align(demo_study)


@pytest.fixture(scope="session")
def demo_model_hu(demo_study, demo_alignment, scorer):
    grid = model_grid(demo_study, demo_alignment, scorer.models.grid)
    return grid, resample(demo_study, demo_alignment, grid)


# ---------------------------------------------------------------- source and NVRTC (no GPU needed)

def test_launch_arguments_are_named_as_in_the_kernel_source():
    """Signatures are read from kernels.cu; a launch must name every parameter, and only those."""
    from runtime.gpu.device import kernel_args
    source = kernels.SOURCE.read_text()
    assert len(kernels.KERNELS) == source.count('extern "C" __global__') == 24
    assert [n for n, _ in kernels.KERNELS["component_box"]] == ["lab", "size", "largest", "fraction", "nz", "ny",
                                                               "nx", "box"]
    assert len(kernel_args("box_reset", {"box": 0})) == 1
    with pytest.raises(TypeError, match="missing"):
        kernel_args("flip_x", {"v": 0, "nx": 7})
    with pytest.raises(TypeError, match="unknown"):
        kernel_args("box_reset", {"box": 0, "boxes": 1})


@pytest.mark.parametrize("arch", ["sm_75", "sm_80", "sm_86", "sm_89", "sm_90"])
def test_nvrtc_compiles_every_kernel(arch, tmp_path, monkeypatch):
    pytest.importorskip("cuda.bindings", reason="cuda-bindings not installed (pip install '.[test]')")
    from runtime.errors import DeviceUnavailable
    monkeypatch.setenv("ASPECTS_CACHE", str(tmp_path))
    try:
        cubin = kernels.compile_cubin(arch)
    except DeviceUnavailable as exc:
        if "NVRTC library not found" in str(exc):
            pytest.skip(str(exc))
        raise
    assert cubin[:4] == b"\x7fELF"
    for name in kernels.KERNELS:
        assert name.encode() in cubin, f"{name} missing from the {arch} cubin"
    assert kernels.compile_cubin(arch) == cubin                      # second call: from the cache
    assert len(list((tmp_path / "kernels").glob(f"{arch}-*.cubin"))) == 1


# ---------------------------------------------------------------- preprocessing

def _oblique_study(rng) -> tuple[Study, Alignment]:
    """A smooth random volume on an oblique thin-slice grid, and a rotated model frame."""
    vol = ndimage.gaussian_filter(rng.normal(0, 400, (40, 70, 64)), 2).astype(np.float32)
    c, s = np.cos(0.2), np.sin(0.2)
    affine = np.array([[0.9 * c, -0.9 * s, 0, -30], [0.9 * s, 0.9 * c, 0, -28], [0, 0.1, 1.25, -20], [0, 0, 0, 1]])
    m = np.eye(4)
    m[:3, :3] = np.array([[np.cos(0.1), -np.sin(0.1), 0], [np.sin(0.1), np.cos(0.1), 0], [0, 0, 1]])
    m[:3, 3] = (-2.0, 3.0, 5.0)
    return (Study(hu=vol, affine=affine, source="synthetic"),
            Alignment(matrix=m, normal=m[:3, 0], point=m[:3, 3], yaw_deg=5.7, roll_deg=0.0, symmetry=1.0))


def test_resample_matches_cpu_with_slab_averaging(device, rng):
    study, alignment = _oblique_study(rng)
    grid = model_grid(study, alignment, GridSpec((0.8, 0.8), (60, 66), 4.0, 5.0))
    assert grid.slab == 4
    expected = resample(study, alignment, grid)
    got = device.get(resample_on_device(device, device.put(study.hu), study, alignment, grid))
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-3)


def test_resample_matches_cpu_on_demo(device, demo_study, demo_alignment, demo_model_hu):
    grid, expected = demo_model_hu
    got = device.get(resample_on_device(device, device.put(demo_study.hu), demo_study, demo_alignment, grid))
    np.testing.assert_allclose(got, expected, atol=1e-3)


def test_skull_strip_and_window_match_cpu(device, demo_model_hu, scorer):
    grid, hu = demo_model_hu
    brain_cpu = brain_mask(hu, grid.spacing[0])
    hu_dev = device.put(hu)
    brain, count, f = strip_on_device(device, hu_dev, grid.spacing[0])
    got = device.get(brain).astype(bool).repeat(f, axis=1).repeat(f, axis=2)
    assert (got != brain_cpu).sum() == 0
    assert int(device.get(count)[0]) * f * f == int(brain_cpu.sum())
    image = device.get(window_on_device(device, hu_dev, brain, f, *scorer.models.window))
    np.testing.assert_array_equal(image, window(hu, brain_cpu, *scorer.models.window))


def test_morphology_fill_and_components_match_scipy(device, rng):
    shape = (5, 48, 40)
    noise = ndimage.gaussian_filter(rng.random(shape), (0, 1.5, 1.5))
    mask = (noise > np.quantile(noise, 0.45)).astype(np.uint8)
    buf = device.put(mask)
    out = device.empty(shape, np.uint8)
    cross = np.zeros((1, 3, 3), bool)
    cross[0] = ndimage.generate_binary_structure(2, 1)
    for r in (1, 3):
        device.launch("morph_diamond", mask.size, src=buf, nz=shape[0], ny=shape[1], nx=shape[2], r=r, erode=1,
                      out=out)
        np.testing.assert_array_equal(device.get(out).astype(bool),
                                      ndimage.binary_erosion(mask, cross, iterations=r), err_msg=f"erode {r}")
        device.launch("morph_diamond", mask.size, src=buf, nz=shape[0], ny=shape[1], nx=shape[2], r=r, erode=0,
                      out=out)
        np.testing.assert_array_equal(device.get(out).astype(bool),
                                      ndimage.binary_dilation(mask, cross, iterations=r), err_msg=f"dilate {r}")
    filled = device.put(mask)
    device.launch_blocks("fill_holes_slices", shape[0], mask=filled, nz=shape[0], ny=shape[1], nx=shape[2])
    np.testing.assert_array_equal(device.get(filled).astype(bool),
                                  np.stack([ndimage.binary_fill_holes(s) for s in mask]))
    largest = device.empty(shape, np.uint8)
    largest_component(device, buf, largest)
    labels, n = ndimage.label(mask)
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
    np.testing.assert_array_equal(device.get(largest).astype(bool), labels == 1 + int(np.argmax(sizes)))
    empty = device.put(np.zeros(shape, np.uint8))
    largest_component(device, empty, largest)
    assert not device.get(largest).any()


def test_mirror_average_kernels(device, rng):
    x = rng.normal(size=(3, 5, 7)).astype(np.float32)
    y = rng.normal(size=(3, 5, 7)).astype(np.float32)
    bx, by = device.put(x), device.put(y)
    device.launch("flip_x", x.size // 2, v=bx, rows=x.size // 7, nx=7)
    np.testing.assert_array_equal(device.get(bx), x[..., ::-1])
    device.launch("add_flipped_x", y.size, acc=by, v=bx, rows=y.size // 7, nx=7)
    np.testing.assert_array_equal(device.get(by), y + x)


# ---------------------------------------------------------------- batches

def test_patch_batch_matches_cpu(device, demo_result, scorer):
    grid, hu, labels = demo_result.grid, demo_result.hu, demo_result.labels
    image = window(hu, brain_mask(hu, grid.spacing[0]), *scorer.models.window)
    for role in ("classify_subcortical", "classify_cortical"):
        card = getattr(scorer.models, role)
        expected = build_batch(image, labels, card.regions, card.crop)
        pairs = device.empty((len(card.regions), 2, 2, *card.crop), np.float32)
        sums = batch_on_device(device, device.put(image), device.put(labels), card.regions, pairs)
        np.testing.assert_array_equal(device.get(pairs), expected.pairs)
        got = host_batch(card.regions, device.get(sums), None, grid.shape, card.crop)
        assert got.origins == expected.origins and got.assessable == expected.assessable


# ---------------------------------------------------------------- the whole GPU path, emulated

@pytest.mark.parametrize("segmenter", ["atlas", "network"])
def test_gpu_pipeline_emulated_matches_cpu(emulated_device, demo_result, scorer, segmenter):
    """GpuScorer's own stage code on the emulated device and ONNX Runtime engines: same score,
    same labels, same patches as the CPU path, with either segmenter."""
    from runtime.cpu import CpuScorer
    from runtime.gpu.pipeline import GpuScorer
    engines = {c.role: EmulatedEngine(c, emulated_device) for c in scorer.models.cards}
    gpu = GpuScorer(gpu=emulated_device, engines=engines, keep_pairs=True, segmenter=segmenter)
    got = gpu.score(DEMO_STUDY)
    exp = demo_result if segmenter == "atlas" else CpuScorer(segmenter="network").score(DEMO_STUDY)
    assert np.abs(got.alignment.matrix - exp.alignment.matrix).max() < 0.05
    np.testing.assert_allclose(got.hu, exp.hu, atol=0.05)
    assert (got.labels != exp.labels).mean() < 1e-3
    assert got.score.aspects == exp.score.aspects and got.score.affected == exp.score.affected
    for g, e in zip(got.classifications, exp.classifications):
        np.testing.assert_allclose(g.probability, e.probability, atol=1e-3)
    assert got.metadata["brain_ml"] == pytest.approx(exp.metadata["brain_ml"], rel=1e-3)
    assert [s for s, _ in got.timings] == list(STAGES)
    assert "resample_slab" in emulated_device.launches and "crop_pairs" in emulated_device.launches
