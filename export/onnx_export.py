"""Export trained networks to ONNX (fp32 + mixed-precision fp16) with a model card each.

fp32: opset 17, eval mode, checked with the ONNX checker and against PyTorch on
fresh random inputs (max abs error < 1e-4). fp16: the same graph with weights and
activations in fp16 but fp32 inputs/outputs, and normalisation, reductions and
sigmoid kept in fp32, for TensorRT's strongly typed mode (TensorRT 11 has no
FP16 builder flag, so the precision must live in the graph).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from runtime.modelcard import CardDraft, ModelCard, file_sha256, write_card

from .manifest import write_manifest

OPSET = 17
PARITY_TOL = 1e-4
# Normalisation statistics (GroupNorm3d: Sub, Mul, ReduceMean, Sqrt, Div) stay fp32: squared
# activations overflow fp16 and their means lose it.
FP32_ONLY_OPS = ["BatchNormalization", "InstanceNormalization", "GroupNormalization", "ReduceMean",
                 "GlobalAveragePool", "Sigmoid", "Softmax", "Div", "Pow", "Sqrt", "Max", "Abs", "Sub", "Mul"]


class GroupNorm3d(nn.GroupNorm):
    """nn.GroupNorm (same parameters) with the statistics as nested means, one axis at a time,
    swapped in for export only (training keeps PyTorch's faster fused kernel).

    Exported as-is, ONNX Runtime sums each group's 10^5-10^6 voxels sequentially in fp32; its
    output then drifted 1.2e-4 from PyTorch after long training, past the export check's 1e-4.
    Short nested means keep it near 1e-5 at no measurable inference cost."""

    def forward(self, x):
        b, c, d, h, w = x.shape
        g = x.reshape(b, self.num_groups, c // self.num_groups, d, h, w)
        centred = g - _nested_mean(g)
        var = _nested_mean(centred * centred)
        y = (centred / torch.sqrt(var + self.eps)).reshape(b, c, d, h, w)
        return y * self.weight.reshape(1, c, 1, 1, 1) + self.bias.reshape(1, c, 1, 1, 1)


def _nested_mean(t: torch.Tensor) -> torch.Tensor:
    return t.mean(5, keepdim=True).mean(4, keepdim=True).mean(3, keepdim=True).mean(2, keepdim=True)


def export_copy(model: torch.nn.Module) -> torch.nn.Module:
    """An eval-mode copy of `model` with every 5-D nn.GroupNorm exported as GroupNorm3d."""
    model = copy.deepcopy(model).eval()
    for module in model.modules():
        if type(module) is torch.nn.GroupNorm:
            module.__class__ = GroupNorm3d
    return model


class _Wrap(torch.nn.Module):
    """Segmenters ship class probabilities (softmax over channels), classifiers (probability, cam)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        out = self.model(x)
        return out if isinstance(out, tuple) else (out.softmax(dim=1),)


def export_model(model: torch.nn.Module, example: torch.Tensor, out_dir: Path, stem: str,
                 input_name: str, output_names: list[str], dynamic_axes: dict, draft: CardDraft,
                 seed: int = 0) -> ModelCard:
    """Write `stem.onnx`, `stem.fp16.onnx`, `stem.json`; returns the card as the runtime reads it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model = export_copy(model)
    onnx_path = out_dir / f"{stem}.onnx"
    with torch.no_grad():
        torch.onnx.export(_Wrap(model).eval(), (example,), str(onnx_path), input_names=[input_name],
                          output_names=output_names, dynamic_axes=dynamic_axes, opset_version=OPSET,
                          do_constant_folding=True, dynamo=False)
    proto = onnx.load(str(onnx_path))
    onnx.checker.check_model(proto, full_check=True)
    max_err = parity_error(model, onnx_path, example, seed)
    if max_err >= PARITY_TOL:
        raise RuntimeError(f"{stem}: ONNX differs from PyTorch by {max_err:.2e} (>= {PARITY_TOL})")
    fp16_path = out_dir / f"{stem}.fp16.onnx"
    _write_fp16(proto, fp16_path)
    card = write_card(out_dir / f"{stem}.json", {
        **draft.to_json(),
        "onnx": onnx_path.name, "sha256": file_sha256(onnx_path),
        "onnx_fp16": fp16_path.name, "sha256_fp16": file_sha256(fp16_path),
        "opset": OPSET, "export_parity_max_abs_error": float(max_err),
        "inputs": [_spec(proto.graph.input[0])], "outputs": [_spec(o) for o in proto.graph.output],
    })
    write_manifest(out_dir)
    if not isinstance(card, ModelCard):
        raise TypeError(f"{stem}: {draft.role} is not a network role")
    return card


def parity_error(model: torch.nn.Module, onnx_path: Path, example: torch.Tensor, seed: int) -> float:
    """Max abs error, PyTorch vs ONNX Runtime, on fresh random inputs of the example's shape."""
    import onnxruntime as ort

    g = torch.Generator().manual_seed(seed + 12345)
    x = torch.rand(example.shape, generator=g) * 2 - 1
    if x.shape[-4] == 2 and x.ndim == 6:   # DA-Net: second channel is a binary mask
        x[..., 1, :, :, :] = (x[..., 1, :, :, :] > 0).float()
    with torch.no_grad():
        ref = _Wrap(model).eval()(x)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    return max(float(np.abs(r.numpy() - o).max()) for r, o in zip(ref, got))


def _write_fp16(proto: onnx.ModelProto, path: Path) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    half = convert_float_to_float16(proto, keep_io_types=True, op_block_list=FP32_ONLY_OPS)
    _topological_sort(half.graph)
    onnx.checker.check_model(half)
    onnx.save(half, str(path))


def _spec(value_info) -> dict:
    t = value_info.type.tensor_type
    dims = [d.dim_param if d.dim_param else int(d.dim_value) for d in t.shape.dim]
    return {"name": value_info.name, "shape": dims,
            "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name}


def _topological_sort(graph: onnx.GraphProto) -> None:
    """The fp16 converter appends its input casts at the end; ONNX wants producers first."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise RuntimeError("fp16 graph has a cycle or a dangling input")
        for n in ready:
            ordered.append(n)
            available.update(n.output)
        pending = [n for n in pending if n not in ready]
    del graph.node[:]
    graph.node.extend(ordered)
