"""build_model(...) through timm; the pipeline's digit CNN is registered in timm's registry."""
from __future__ import annotations

import difflib
import os
import socket
from dataclasses import dataclass

import timm
import torch
import torch.nn as nn
from timm.models import register_model

from pipeline.io import load_checkpoint
from pipeline.errors import PipelineError
from pipeline.nets import NETS, TABLE_MODELS, build_net, parse_hidden

OFFLINE = ("download them once where there is internet (torch.save(timm.create_model(NAME, pretrained=True)"
           ".state_dict(), FILE)) and pass --pretrained-path FILE (.pth or .safetensors)")
HUB_HOST = "huggingface.co"  # where timm's pretrained weights are published


def _conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class DigitCNN(nn.Module):
    """A small VGG-style CNN sized for 28x28 digits: 28 -> 14 -> 7, global average pool, linear.

    About 0.28M parameters at width 32; cheap enough to train five folds on a laptop CPU.
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 1, width: int = 32, drop_rate: float = 0.3):
        super().__init__()
        w = width
        self.num_classes = num_classes
        self.features = nn.Sequential(
            _conv_bn(in_chans, w),  # (B, w, 28, 28)
            _conv_bn(w, 2 * w, stride=2), _conv_bn(2 * w, 2 * w),  # (B, 2w, 14, 14)
            _conv_bn(2 * w, 4 * w, stride=2), _conv_bn(4 * w, 4 * w),  # (B, 4w, 7, 7)
        )
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x).mean((2, 3))  # (B, 4w)
        return self.fc(self.head_drop(x))


@register_model
def digit_cnn(pretrained: bool = False, num_classes: int = 10, in_chans: int = 1, **kwargs) -> DigitCNN:
    """timm entry point: `timm.create_model('digit_cnn', num_classes=10, in_chans=1)`."""
    if pretrained:
        raise PipelineError("--pretrained: digit_cnn has no published weights; train it from scratch")
    allowed = {k: kwargs[k] for k in ("width", "drop_rate") if k in kwargs}
    return DigitCNN(num_classes=num_classes, in_chans=in_chans, **allowed)


@dataclass(frozen=True)
class ModelOptions:
    """build_model's options: the recipe's model settings, and what the input kind gives a network (net_input)."""
    pretrained: bool = False
    pretrained_path: str = ""
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    n_features: int = 0  # mlp: the vector's width (0: a flattened image)
    hidden: str = ""
    embeddings: tuple[int, ...] = ()  # mlp: slots of each categorical column it embeds (the last columns)
    step_features: int = 0  # sequence networks: features per step (0: an image's rows)
    layers: int = 2
    pool: str = "mean"
    steps: int = 1  # mlp on frames: a window of `steps` frames, flattened


def build_model(name: str, num_classes: int, in_chans: int, img_size: int, **options) -> nn.Module:
    """A timm model for (B, in_chans, img_size, img_size) inputs, checked with one forward pass; or one of the
    project's networks (pipeline.nets): the mlp on vectors of `n_features` (0: a flattened image; a window of `steps`
    frames flattened) whose last len(embeddings) columns are categorical slot indices (that many slots each), a
    sequence network on steps of `step_features` (0: an image's rows). `options`: ModelOptions' fields."""
    opts = ModelOptions(**options)
    pretrained, pretrained_path, drop_rate, drop_path_rate = (opts.pretrained, opts.pretrained_path, opts.drop_rate,
                                                              opts.drop_path_rate)
    if name in NETS:
        if pretrained or pretrained_path:
            raise PipelineError(f"--pretrained: {name} has no published weights; train it from scratch")
        if drop_path_rate:
            raise PipelineError(f"--drop-path-rate: {name} has no stochastic depth; leave it at 0")
        return build_net(name, num_classes, opts.n_features or in_chans * img_size * img_size, opts,
                         opts.step_features or in_chans * img_size)
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, [*NETS, *TABLE_MODELS, *timm.list_models()], n=3)
        raise PipelineError(f"--model: unknown model {name!r}" + (f"; did you mean {', '.join(close)}?" if close else
                                                                  "; see timm.list_models()"))
    kwargs = {k: v for k, v in (("drop_rate", drop_rate), ("drop_path_rate", drop_path_rate)) if v}
    cfg = timm.get_pretrained_cfg(name, allow_unregistered=True)
    if cfg is not None and getattr(cfg, "fixed_input_size", False):
        kwargs["img_size"] = img_size  # ViT-style models size their position embeddings at build time
    try:
        if pretrained:
            model = hub_model(name, num_classes, in_chans, kwargs)
        else:
            model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)
    except TypeError as e:  # a backbone without stochastic depth (or dropout) refuses the keyword
        raise PipelineError(f"--model {name}: does not take {', '.join(k for k in kwargs if k in str(e)) or 'these options'}"
                            f" ({str(e)[:80]}); leave --drop-path-rate / --drop-rate at 0 for it") from None
    if pretrained_path:
        load_pretrained(model, pretrained_path, in_chans)
    _check_input_size(model, name, in_chans, img_size)
    return model


def check_model_settings(cfg, n_features: int = 0) -> None:
    """What can be refused of --model and its settings without building it: an unknown name, weights or stochastic
    depth asked of a network that has none, a --hidden that does not parse, a --pretrained-path that cannot be read.
    What only a build can tell (a backbone refusing an option, an image size too small for it) is said when fold
    0's model is built, before its first epoch."""
    name = cfg.model
    if name in NETS:
        if cfg.pretrained or cfg.pretrained_path:
            raise PipelineError(f"--pretrained: {name} has no published weights; train it from scratch")
        if cfg.drop_path_rate:
            raise PipelineError(f"--drop-path-rate: {name} has no stochastic depth; leave it at 0")
        parse_hidden(cfg.hidden)
        return
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, [*NETS, *TABLE_MODELS, *timm.list_models()], n=3)
        raise PipelineError(f"--model: unknown model {name!r}" + (f"; did you mean {', '.join(close)}?" if close else
                                                                  "; see timm.list_models()"))
    if cfg.pretrained and name == "digit_cnn":
        raise PipelineError(f"--pretrained: digit_cnn has no published weights; train it from scratch, or "
                            f"{OFFLINE.replace('NAME', repr(name))}")
    if cfg.pretrained_path:
        load_checkpoint(cfg.pretrained_path)  # read, not built: a missing or unusable file is refused now


def hub_model(name: str, num_classes: int, in_chans: int, kwargs: dict) -> nn.Module:
    """timm's own pretrained loading (the Hugging Face hub, its cache); offline, one line naming --pretrained-path."""
    if name == "digit_cnn":
        raise PipelineError(f"--pretrained: digit_cnn has no published weights; train it from scratch, or "
                            f"{OFFLINE.replace('NAME', repr(name))}")
    proxied = any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"))
    if not proxied and not os.environ.get("HF_HUB_OFFLINE"):
        try:
            socket.getaddrinfo(HUB_HOST, 443)  # fails at once offline, where the hub client retries for a minute
        except OSError:
            raise PipelineError(f"--pretrained: no internet to download {name}'s weights from {HUB_HOST}; "
                                f"{OFFLINE.replace('NAME', repr(name))}") from None
    try:
        return timm.create_model(name, pretrained=True, num_classes=num_classes, in_chans=in_chans, **kwargs)
    except (OSError, RuntimeError, ValueError) as e:  # hub errors are OSErrors; no weights for this name: RuntimeError
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        raise PipelineError(f"--pretrained: could not load {name}'s pretrained weights ({first}); "
                            f"{OFFLINE.replace('NAME', repr(name))}") from None


def pretrained_stats(name: str, in_chans: int) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The normalisation a pretrained backbone was trained with (averaged for gray input), or None."""
    cfg = timm.get_pretrained_cfg(name, allow_unregistered=True)
    mean, std = getattr(cfg, "mean", None), getattr(cfg, "std", None)
    if not mean or not std:
        return None
    if in_chans == len(mean):
        return tuple(mean), tuple(std)
    return (sum(mean) / len(mean),) * in_chans, (sum(std) / len(std),) * in_chans


def _check_input_size(model: nn.Module, name: str, in_chans: int, img_size: int) -> None:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_chans, img_size, img_size))
    except (RuntimeError, AssertionError, ValueError) as e:
        raise PipelineError(f"--model {name} cannot take {img_size}x{img_size} inputs "
                            f"({str(e).splitlines()[0][:100]}); try a larger --img-size such as 64") from None
    finally:
        model.train(was_training)


def load_pretrained(model: nn.Module, path: str, in_chans: int) -> None:
    """Start from local weights: the input conv is adapted to in_chans, a mismatched classifier is skipped."""
    from timm.models import adapt_input_conv

    state = load_checkpoint(path)["state_dict"]
    own = model.state_dict()
    kept, refused = {}, []
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key not in own:
            continue
        if value.shape != own[key].shape and value.ndim == 4 and value.shape[0] == own[key].shape[0]:
            try:
                value = adapt_input_conv(in_chans, value)
            except (AssertionError, NotImplementedError, ValueError):
                refused.append(f"{key} ({value.shape[1]} input channels)")
                continue
        if value.shape == own[key].shape and value.dtype.is_floating_point == own[key].dtype.is_floating_point:
            kept[key] = value
    if not kept:
        raise PipelineError(f"--pretrained-path: {path} has no weights that fit {type(model).__name__}")
    try:
        model.load_state_dict(kept, strict=False)
    except RuntimeError as e:
        raise PipelineError(f"--pretrained-path: {path}: weights do not load ({str(e).splitlines()[0][:100]})") from None
    note = f"; could not adapt {', '.join(refused)} to {in_chans} channel(s): started fresh" if refused else ""
    print(f"loaded {len(kept)}/{len(own)} tensors from {path} (the rest, e.g. the classifier, start fresh){note}")


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DataParallel or DistributedDataParallel; checkpoints always hold its state dict."""
    return model.module if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else model
