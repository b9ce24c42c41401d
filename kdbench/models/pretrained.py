"""The model libraries' own ImageNet-1k weights (``weights: pretrained``): torchvision's ResNets, timm's models.

The weights come from the library's cache on the user's machine (``$TORCH_HOME/hub`` for torchvision, the
Hugging Face cache for timm), or are downloaded by the library where there is internet. They have 1000
classes; a dataset with another number of classes cannot use them as a teacher.
"""

from __future__ import annotations

from typing import Any

import torch

from kdbench.models.timm_adapter import TIMM_PREFIX

#: kdbench model → (library, the library's name for it).
PRETRAINED_SOURCES = {
    "resnet18": ("torchvision", "resnet18"),
    "resnet34": ("torchvision", "resnet34"),
    "resnet50": ("torchvision", "resnet50"),
    "mobilenet_v1": ("timm", "mobilenetv1_100"),
}


class PretrainedError(ValueError):
    """The library has no pretrained weights for this model, or could not load them."""


def pretrained_source(arch: str) -> tuple[str, str]:
    """(library, name) of ``arch``'s pretrained weights; PretrainedError names the models that have them."""
    if arch.startswith(TIMM_PREFIX):
        return "timm", arch.removeprefix(TIMM_PREFIX)
    if arch not in PRETRAINED_SOURCES:
        allowed = ", ".join([*PRETRAINED_SOURCES, f"{TIMM_PREFIX}<name>"])
        raise PretrainedError(f"weights = 'pretrained': model '{arch}' has no library weights; allowed: {allowed}")
    return PRETRAINED_SOURCES[arch]


def pretrained_state_dict(arch: str) -> tuple[dict[str, torch.Tensor], str]:
    """(the library's state dict for ``arch``, its origin, e.g. 'torchvision ResNet18_Weights.IMAGENET1K_V1')."""
    library, name = pretrained_source(arch)
    try:
        if library == "torchvision":
            import torchvision

            weights: Any = torchvision.models.get_model_weights(name).DEFAULT
            return weights.get_state_dict(progress=False), f"torchvision {weights}"
        import timm

        model = timm.create_model(name, pretrained=True)
        tag = getattr(model, "pretrained_cfg", {}).get("tag")
        return model.state_dict(), f"timm {name}" + (f".{tag}" if tag else "")
    except (OSError, RuntimeError, ValueError) as error:  # no cache and no internet, a damaged cache file, ...
        raise PretrainedError(f"weights = 'pretrained' for {arch}: {library} could not load its weights "
                              f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
                              "put them in the library's cache or give a weights file") from None
