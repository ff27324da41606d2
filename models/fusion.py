"""Folding batch normalisation into the convolution before it, for inference.

In eval mode a ``BatchNorm2d`` is an affine map per channel, so ``bn(conv(x))`` equals one convolution
with scaled weights and a bias (``torch.nn.utils.fusion.fuse_conv_bn_eval``). Folding removes a pass
over every activation that the normalisation would read and write: on a 2-core x86 CPU the shipped
SE-ResNet-50 ran batches of 8 and 16 faster folded, by about as much as that machine's noise, and a
single photo no slower (the ceiling of ``bench/service_load.py``, docs/PERFORMANCE.md).

Which convolution feeds which normalisation is read from the data flow (a ``torch.fx`` trace), not from
attribute names, and the folding is done in place on the modules themselves, so the network keeps its
structure: hooks on a stage (Grad-CAM's on ``layer4``) see the same outputs as before. A folded
normalisation becomes ``nn.Identity``, and its convolution then outputs what the normalisation did, so
an explanation of that convolution itself (``layer=...conv1``) explains the normalised features.
"""

import torch.fx
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fold_batch_norms(model: nn.Module) -> int:
    """Fold every ``BatchNorm2d`` whose only input is a ``Conv2d`` used nowhere else into that
    convolution, in place; the model must be in eval mode. Returns how many were folded."""
    if model.training:
        raise ValueError("batch normalisation folds only in eval mode: call model.eval() first")
    graph = torch.fx.symbolic_trace(model).graph
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    folded = 0
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[str(node.target)], nn.BatchNorm2d):
            continue
        source = node.args[0]
        if not isinstance(source, torch.fx.Node) or source.op != "call_module":
            continue
        conv, norm = modules[str(source.target)], modules[str(node.target)]
        # A module called twice (shared weights) or a convolution whose output has other users cannot
        # take the normalisation's scale without changing what those see.
        if not isinstance(conv, nn.Conv2d) or len(source.users) != 1:
            continue
        if calls[str(source.target)] != 1 or calls[str(node.target)] != 1:
            continue
        assert isinstance(norm, nn.BatchNorm2d)
        fused = fuse_conv_bn_eval(conv, norm)
        _replace(model, str(source.target), fused)
        _replace(model, str(node.target), nn.Identity())
        folded += 1
    return folded


def _replace(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)
