"""Models: the CIFAR KD zoo, small digits/MNIST models, and feature taps.

``build_model(name, num_classes, **kwargs)`` builds a registered model; ``FeatureTaps`` collects named
features (``logits``, ``pooled``, ``stage1…N``, ``pre_stageK``, ``tokens``) through forward hooks.
"""

from kdbench.models import (  # noqa: F401  (imported to register their models)
    cifar_resnet,
    imagenet_style_resnet,
    mobilenetv2,
    shufflenet_v1,
    shufflenet_v2,
    small,
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

__all__ = [
    "ALL_STAGES",
    "MODELS",
    "FeatureTaps",
    "ModelInfo",
    "available_taps",
    "build_model",
    "expand_tap_names",
    "get_classifier",
    "model_info",
    "model_names",
    "register_model",
    "tap_shapes",
    "tokens_from_map",
]
