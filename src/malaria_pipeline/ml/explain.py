"""Where the network looks: Grad-CAM heatmaps (Selvaraju et al. 2017) with Captum's ``LayerGradCam``.

Grad-CAM weighs each channel of the last convolutional block's output by the mean gradient of one
class's logit with respect to it, sums the channels and keeps the positive part: the regions whose
features raise that class's score. The block's output is coarse (6×6 for a 50-pixel cell through
ResNet-9), so the map is upsampled bilinearly to the image's size.

Captum (the PyTorch project's interpretability library) computes the weighted map; this module only
chooses the layer, batches, and scales each map to [0, 1] for display.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from malaria_pipeline.ml.models import CellClassifier
from malaria_pipeline.ml.resnet9 import ResNet9


def last_block(network: nn.Module) -> nn.Module:
    """The last convolutional block, whose output Grad-CAM weighs: ResNet-9's ``layer3``, a torchvision
    ResNet's ``layer4``."""
    if isinstance(network, ResNet9):
        return network.layer3
    if isinstance(network, torchvision.models.ResNet):
        return network.layer4
    raise ValueError(
        f"No Grad-CAM layer is known for {type(network).__name__}: expected ResNet-9 or a torchvision ResNet"
    )


def grad_cam(
    classifier: CellClassifier, images: torch.Tensor, target: int | torch.Tensor, batch_size: int = 256
) -> torch.Tensor:
    """Grad-CAM heatmaps ``float32, N×S×S`` on the CPU, each scaled to [0, 1] by its own maximum.

    A map that is zero everywhere means that no region raised the target class's logit.

    Args:
        classifier: in eval mode on its device (its bf16 switch is ignored: gradients in ``float32``).
        images: ``uint8, N×3×S×S``, as the classifier takes them.
        target: the class index to explain, one for all images or ``int64, N`` (the predicted classes).
        batch_size: images per forward and backward pass.
    """
    from captum.attr import LayerAttribution, LayerGradCam  # 2 s to import: only when explaining

    classifier.eval()
    device = classifier.normalize.mean.device
    size = images.shape[-2:]
    targets = torch.as_tensor(target, dtype=torch.long)
    if targets.dim() == 0:
        targets = targets.expand(len(images))
    explainer = LayerGradCam(classifier, last_block(classifier.network))
    maps, bf16 = [], classifier.bf16
    classifier.bf16 = False
    try:
        with torch.enable_grad():
            for start in range(0, len(images), batch_size):
                batch = images[start : start + batch_size].to(device)
                coarse = explainer.attribute(
                    batch, target=targets[start : start + batch_size].to(device), relu_attributions=True
                )
                maps.append(
                    LayerAttribution.interpolate(coarse.detach().float(), tuple(size), "bilinear")[:, 0].cpu()
                )
    finally:
        classifier.bf16 = bf16
    if not maps:
        return torch.zeros((0, *size))
    heatmaps = torch.cat(maps)  # bilinear weights are convex: the positive part stays positive
    peak = heatmaps.amax(dim=(1, 2), keepdim=True)
    return torch.where(
        peak > 0, heatmaps / peak.clamp_min(torch.finfo(torch.float32).tiny), torch.zeros_like(heatmaps)
    )
