"""timm models in kdbench: ``timm:<name>`` for any timm model, and CIFAR-size ViT presets.

``build_model("timm:<name>", num_classes, **kw)`` runs ``timm.create_model(name, pretrained=False,
num_classes=num_classes, **kw)`` and wraps the result in :class:`TimmModel`, which declares kdbench's feature taps.
Nothing is ever downloaded: ``pretrained=True`` raises; to start from trained weights pass
``checkpoint_path=<local file>`` (a timm/PyTorch checkpoint of the bare timm model, loaded by timm before wrapping).
A kdbench checkpoint of a TimmModel has the timm state-dict keys under ``model.``.

Taps of a TimmModel (the generic FeatureTaps hook machinery, unchanged):

* ``logits``;
* ``pooled``: the pre-logits feature the classifier reads (timm's ``forward_head(x, pre_logits=True)``), B×D,
  so ``get_classifier(model)(pooled) == logits`` exactly. DeiT distilled models have two heads: there ``pooled``
  is B×2D, the CLS and distillation tokens concatenated (after head dropout), and the classifier is timm's
  ``(head(cls) + head_dist(dist)) / 2`` (timm's inference output; ``distilled_training`` is not used);
* ``stage1…L`` (models with ``blocks``, e.g. every ViT): the output of ``blocks[k-1]``; for a ViT that is
  B×(prefix+N)×D, prefix (CLS/distillation/register) tokens included. timm CNNs without ``blocks``
  (e.g. timm's ResNets) have no stage taps;
* ``token_map``: the last features as a B×D×h×w grid. ViT: the patch tokens of the last block after the final
  norm, prefix tokens dropped (``forward_features(x)[:, num_prefix_tokens:]``), laid out on the h×w patch grid;
  CNN: the final feature map (NCHW, also for timm models that return NHWC);
* ``tokens``: ``token_map`` flattened to B×N×D (``token_source = "token_map"``): for a ViT exactly
  ``forward_features(x)[:, num_prefix_tokens:]``, for a CNN the last map's positions, as for kdbench's CNNs.
  So a CNN teacher and a ViT student both give ``tokens``. If the patch tokens do not fill the grid (timm's
  ``patch_drop_rate`` in training), ``token_map``/``tokens`` are not produced and FeatureTaps says so.

Presets, registered as kdbench models (unlisted: ``model_names(include_unlisted=True)`` shows them):

* ``vit_cifar_tiny``: the DeiT-Tiny/ViT-Tiny shape (embed 192, depth 12, heads 3, MLP ratio 4) on 32×32 inputs
  with 4×4 patches (8×8 = 64 patch tokens + CLS); 5,380,132 parameters at 100 classes. kwargs are passed to
  timm's ``VisionTransformer`` (e.g. ``drop_path_rate=0.1``). No separate ``deit_tiny_cifar``: DeiT-Tiny is the
  same architecture (DeiT differs in its training recipe); ``timm:deit_tiny_distilled_patch16_224`` with
  ``img_size=32, patch_size=4`` gives the distillation-token variant.

timm is imported lazily, on the first timm name or preset built or looked up.
"""

from __future__ import annotations

import difflib
import functools
import math
from typing import Any

import torch
from torch import nn

from kdbench.models.catalog import MODELS, ModelEntry, ModelInfo
from kdbench.registry import UnknownNameError

TIMM_PREFIX = "timm:"

_PRETRAINED_HELP = (
    "pretrained weights cannot be downloaded (kdbench builds timm models with pretrained=False, offline); "
    "to start from trained weights, use a local checkpoint: pass checkpoint_path='/path/to/checkpoint.pth' "
    "(a timm/PyTorch checkpoint of the bare timm model, with the same num_classes), or load_state_dict a "
    "kdbench checkpoint"
)


def _timm() -> Any:
    import timm

    return timm


class _DistilledHead(nn.Module):
    """DeiT's two heads as one classifier of ``pooled = [cls ‖ dist]``: ``(head(cls) + head_dist(dist)) / 2``.

    The heads stay submodules of the timm model only (looked up on each call), so the state dict is timm's.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "_owner", model)  # a plain reference, not a submodule

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        owner = self._owner
        cls, dist = pooled.chunk(2, dim=1)
        return (owner.head(cls) + owner.head_dist(dist)) / 2


def _is_distilled_vit(model: nn.Module) -> bool:
    from timm.models.deit import VisionTransformerDistilled

    return isinstance(model, VisionTransformerDistilled)


class TimmModel(nn.Module):
    """A timm model with kdbench's taps (see the module docstring); ``model`` is the bare timm model."""

    token_source = "token_map"

    def __init__(self, model: nn.Module, name: str) -> None:
        super().__init__()
        self.model = model
        self.timm_name = name
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 0) or 0)
        self.distilled = _is_distilled_vit(model)
        if getattr(model, "head_dist", None) is not None and not self.distilled:
            raise ValueError(f"timm model '{name}' has a distillation head kdbench does not support (only DeiT's)")
        self._channels_last = str(getattr(model, "output_fmt", "NCHW")).upper().endswith("NHWC")
        self.pre_logits = nn.Identity()  # its output is the `pooled` tap
        self.token_map = nn.Identity()  # its output is the `token_map` tap (and so `tokens`)
        if self.distilled:
            self.distilled_head = _DistilledHead(model)
            self.classifier_module = "distilled_head"
        else:
            head = model.get_classifier()
            path = next((p for p, m in model.named_modules() if m is head and p), None)
            if path is None:
                raise ValueError(f"timm model '{name}': cannot find its classifier ({type(head).__name__})")
            self.classifier_module = f"model.{path}"
        self.tap_modules: dict[str, str] = {"pooled": "pre_logits", "token_map": "token_map"}
        blocks = getattr(model, "blocks", None)
        if isinstance(blocks, (nn.Sequential, nn.ModuleList)):
            self.tap_modules.update({f"stage{k}": f"model.blocks.{k - 1}" for k in range(1, len(blocks) + 1)})

    def _classifier(self) -> nn.Module:
        return self.distilled_head if self.distilled else self.model.get_classifier()

    def _grid(self, x: torch.Tensor, num_tokens: int) -> tuple[int, int] | None:
        """The h×w patch grid of ``num_tokens`` patch tokens for input ``x``, or None if they do not fill one."""
        patch_embed = getattr(self.model, "patch_embed", None)
        grid: tuple[int, ...] | None = None
        if getattr(self.model, "dynamic_img_size", False) and hasattr(patch_embed, "dynamic_feat_size"):
            grid = tuple(patch_embed.dynamic_feat_size((x.shape[-2], x.shape[-1])))
        elif getattr(patch_embed, "grid_size", None) is not None:
            grid = tuple(patch_embed.grid_size)
        else:
            side = math.isqrt(num_tokens)
            grid = (side, side)
        return (grid[0], grid[1]) if len(grid) == 2 and grid[0] * grid[1] == num_tokens else None

    def _feature_map(self, feats: torch.Tensor, x: torch.Tensor) -> torch.Tensor | None:
        """B×C×h×w view of the last features (ViT: patch tokens only), or None if they have no grid layout."""
        if feats.dim() == 4:
            return feats.permute(0, 3, 1, 2) if self._channels_last else feats
        if feats.dim() == 3:
            patches = feats[:, self.num_prefix_tokens :]
            grid = self._grid(x, patches.shape[1])
            if grid is not None:
                return patches.transpose(1, 2).unflatten(2, grid)
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a B×C×H×W batch (the same computation as the timm model's forward)."""
        feats = self.model.forward_features(x)
        feature_map = self._feature_map(feats, x)
        if feature_map is not None:
            self.token_map(feature_map)
        if self.distilled:
            pooled = self.model.head_drop(feats[:, :2].flatten(1))  # [cls ‖ dist]
        else:
            pooled = self.model.forward_head(feats, pre_logits=True)
        return self._classifier()(self.pre_logits(pooled))


def _reject_pretrained(label: str, kwargs: dict[str, Any]) -> None:
    if kwargs.pop("pretrained", False):
        raise ValueError(f"model '{label}': {_PRETRAINED_HELP}")


def _check_timm_name(name: str) -> None:
    """Raise UnknownNameError, with the closest timm names, if timm has no model ``name``."""
    timm = _timm()
    if name and timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f" (closest: {', '.join(repr(TIMM_PREFIX + c) for c in close)})" if close else ""
    raise UnknownNameError(
        f"unknown timm model '{name}'{hint}; any name from timm.list_models() works as '{TIMM_PREFIX}<name>'"
    )


def _square_size(label: str, img_size: object) -> int:
    if isinstance(img_size, (tuple, list)):
        if len(img_size) != 2 or img_size[0] != img_size[1]:
            raise ValueError(f"model '{label}': kdbench needs square inputs, got img_size={img_size!r}")
        img_size = img_size[0]
    return int(img_size)  # type: ignore[call-overload]


def _vit_info(label: str, family: str, description: str, default: tuple[int, int], **kwargs: Any) -> ModelInfo:
    """ModelInfo for a model whose input size/channels come from timm's ``img_size``/``in_chans`` kwargs."""
    in_channels, size = default
    return ModelInfo(
        label,
        family,
        _square_size(label, kwargs.get("img_size", size)),
        int(kwargs.get("in_chans", in_channels)),
        description,
    )


def timm_model_info(name: str, **kwargs: Any) -> ModelInfo:
    """ModelInfo of ``timm:<name>`` built with ``kwargs``: input size from ``img_size`` or timm's default config."""
    _check_timm_name(name)
    try:
        cfg = _timm().get_pretrained_cfg(name)
    except RuntimeError as err:  # a bad pretrained tag, e.g. "vit_tiny_patch16_224.nope"
        raise UnknownNameError(f"timm model '{name}': {err}") from None
    shape = tuple(cfg.input_size) if cfg is not None and cfg.input_size else (3, 224, 224)
    description = f"timm {name} (random init; any timm model works as {TIMM_PREFIX}<name>)"
    return _vit_info(TIMM_PREFIX + name, "timm", description, (shape[0], shape[-1]), **kwargs)


def build_timm_model(name: str, num_classes: int, **kwargs: Any) -> TimmModel:
    """``timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)`` wrapped as a TimmModel."""
    label = TIMM_PREFIX + name
    _check_timm_name(name)
    _reject_pretrained(label, kwargs)
    try:
        model = _timm().create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    except TypeError as err:
        raise TypeError(f"model '{label}': {err}") from err
    return TimmModel(model, name)


@functools.lru_cache(maxsize=256)
def _resolve(label: str) -> ModelEntry:
    """The ModelEntry of ``timm:<name>`` (the catalog's resolver for the ``timm:`` prefix)."""
    name = label[len(TIMM_PREFIX) :]
    return ModelEntry(
        timm_model_info(name),
        functools.partial(build_timm_model, name),
        functools.partial(timm_model_info, name),
    )


MODELS.add_resolver(TIMM_PREFIX, _resolve)


# ------------------------------------------------------------------------------------------ CIFAR ViT presets

VIT_PRESETS: dict[str, dict[str, Any]] = {
    "vit_cifar_tiny": {"img_size": 32, "patch_size": 4, "embed_dim": 192, "depth": 12, "num_heads": 3},
}


def _register_preset(name: str, config: dict[str, Any]) -> None:
    description = (
        f"ViT (timm VisionTransformer) {config['img_size']}px, patch {config['patch_size']}, "
        f"embed {config['embed_dim']}, depth {config['depth']}, heads {config['num_heads']}"
    )

    def factory(num_classes: int, **kwargs: Any) -> TimmModel:
        _reject_pretrained(name, kwargs)
        checkpoint_path = kwargs.pop("checkpoint_path", None)
        from timm.models.vision_transformer import VisionTransformer

        try:
            model = VisionTransformer(num_classes=num_classes, **{**config, **kwargs})
        except TypeError as err:
            raise TypeError(f"model '{name}': {err}") from err
        if checkpoint_path:
            _timm().models.load_checkpoint(model, checkpoint_path)
        return TimmModel(model, name)

    default = (3, config["img_size"])
    info_for = functools.partial(_vit_info, name, "vit", description, default)
    MODELS.register_unlisted(name, ModelEntry(info_for(), factory, info_for))


for _name, _config in VIT_PRESETS.items():
    _register_preset(_name, _config)
