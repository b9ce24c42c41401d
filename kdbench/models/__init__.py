"""Models: the CIFAR KD zoo, ImageNet models, small digits/MNIST models, timm models, and feature taps.

``build_model(name, num_classes, **kwargs)`` builds a registered model, a CIFAR ViT preset (``vit_cifar_tiny``)
or any timm model as ``timm:<name>`` (see ``timm_adapter``); ``FeatureTaps`` collects named
features (``logits``, ``pooled``, ``stage1…N``, ``pre_stageK``, ``tokens``) through forward hooks;
``state_dict_from_file(path, model)`` reads a weight file (e.g. a published teacher) fitted to a model.
"""

from kdbench.models import (  # noqa: F401  (imported to register their models)
    cifar_resnet,
    imagenet,
    imagenet_style_resnet,
    mobilenetv2,
    shufflenet_v1,
    shufflenet_v2,
    small,
    timm_adapter,
    vgg,
    wide_resnet,
)
from kdbench.models.catalog import MODELS, ModelInfo, build_model, model_info, model_names, register_model
from kdbench.models.taps import (
    ALL_STAGES,
    FeatureTaps,
    available_taps,
    expand_tap_names,
    get_classifier,
    tap_shapes,
    tokens_from_map,
)
from kdbench.models.timm_adapter import TIMM_PREFIX, TimmModel
from kdbench.models.weights import WeightsError, state_dict_from_file

__all__ = [
    "ALL_STAGES",
    "MODELS",
    "TIMM_PREFIX",
    "FeatureTaps",
    "ModelInfo",
    "TimmModel",
    "WeightsError",
    "available_taps",
    "build_model",
    "expand_tap_names",
    "get_classifier",
    "model_info",
    "model_names",
    "register_model",
    "state_dict_from_file",
    "tap_shapes",
    "tokens_from_map",
]
