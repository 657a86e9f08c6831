"""ViT image encoder (Dosovitskiy et al. 2021) on `transformers.ViTModel`, run on all cameras of a batch at once.

Random init from a `ViTConfig`, or `from_pretrained` of a local directory (never a download), in float32 whatever
dtype the folder was saved in, normalising the pixels with the folder's `preprocessor_config.json` (`image_mean`,
`image_std`; 0.5 / 0.5, the google/vit-* values, without one). `pretrained_config()` is what a checkpoint keeps of
such a folder, so that it loads without the folder (`vit_config`). Only the cameras that are present are encoded;
missing ones get zero features.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from transformers import ViTConfig, ViTModel

# the normalisation of the google/vit-* checkpoints (ViTImageProcessor defaults)
_MEAN, _STD = 0.5, 0.5


def processor_normalisation(pretrained_dir: str | Path) -> tuple[list[float], list[float]]:
    """(image_mean, image_std) per RGB channel from a pretrained folder's `preprocessor_config.json`; the google/vit-*
    values where it has none. Errors name the file and the field."""
    path = Path(pretrained_dir) / "preprocessor_config.json"
    if not path.is_file():
        return [_MEAN] * 3, [_STD] * 3
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not readable JSON ({e})") from e
    if cfg.get("do_normalize") is False:
        return [0.0] * 3, [1.0] * 3
    out = []
    for field, default in (("image_mean", _MEAN), ("image_std", _STD)):
        value = cfg.get(field, default)
        value = [float(value)] * 3 if isinstance(value, (int, float)) else [float(v) for v in value]
        if len(value) != 3 or (field == "image_std" and min(value) <= 0):
            raise ValueError(f"{path}: field {field!r} must be three numbers (std positive), got {cfg.get(field)!r}")
        out.append(value)
    return out[0], out[1]


class ImageEncoder(nn.Module):
    """Images <B, C, 3, H, W> uint8 -> patch tokens <B, C, h, w, out_dim> (h = H // patch, w = W // patch)."""

    def __init__(self, hidden: int = 192, layers: int = 4, heads: int = 3, patch: int = 16,
                 image_size: tuple[int, int] = (96, 160), pretrained_dir: str | None = None,
                 mlp_ratio: float = 4.0, vit_config: dict | None = None):  # fmt: skip
        """`vit_config` (a checkpoint's `pretrained_config()`) builds the pretrained folder's architecture and
        normalisation without reading the folder; the weights come from the checkpoint."""
        super().__init__()
        mean, std = [_MEAN] * 3, [_STD] * 3
        if vit_config is not None:
            self.vit = ViTModel(ViTConfig.from_dict(vit_config["vit"]), add_pooling_layer=False)
            mean, std = vit_config["image_mean"], vit_config["image_std"]
        elif pretrained_dir is not None:
            if not Path(pretrained_dir).is_dir():
                raise FileNotFoundError(f"{pretrained_dir}: no such pretrained ViT folder (vit_pretrained_dir)")
            self.vit = ViTModel.from_pretrained(pretrained_dir, add_pooling_layer=False, local_files_only=True,
                                                dtype=torch.float32)  # fmt: skip
            mean, std = processor_normalisation(pretrained_dir)
        else:
            config = ViTConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                               intermediate_size=int(hidden * mlp_ratio), patch_size=patch,
                               image_size=list(image_size))  # fmt: skip
            self.vit = ViTModel(config, add_pooling_layer=False)
        cfg = self.vit.config
        self.patch = cfg.patch_size
        size = cfg.image_size if isinstance(cfg.image_size, (list, tuple)) else (cfg.image_size, cfg.image_size)
        self.image_size = tuple(int(s) for s in size)  # (H, W) the position embeddings were made for
        served = tuple(int(s) for s in image_size)
        if served != self.image_size and self.image_size[0] != self.image_size[1]:
            # transformers interpolates only square position-embedding grids: say so now, not at the first forward
            where = f"{pretrained_dir}: " if pretrained_dir is not None and vit_config is None else ""
            raise ValueError(f"{where}a ViT made for {self.image_size[0]}x{self.image_size[1]} images (not square) "
                             f"cannot take the data's {served[0]}x{served[1]} (image_size)")  # fmt: skip
        self.out_dim = cfg.hidden_size
        self.mean, self.std = [float(m) for m in mean], [float(v) for v in std]
        # (x / 255 - mean) / std per channel as x * scale - shift
        scale = torch.tensor([1.0 / (255.0 * v) for v in self.std]).view(3, 1, 1)
        self.register_buffer("scale", scale, persistent=False)
        self.register_buffer("shift", torch.tensor(self.mean).view(3, 1, 1) / torch.tensor(self.std).view(3, 1, 1),
                             persistent=False)  # fmt: skip

    def pretrained_config(self) -> dict:
        """Plain data that rebuilds this encoder's architecture and normalisation (`vit_config`)."""
        return {"vit": self.vit.config.to_dict(), "image_mean": self.mean, "image_std": self.std}

    def forward(self, images: torch.Tensor, camera_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, c, _, height, width = images.shape
        h, w = height // self.patch, width // self.patch
        shape = (b, c, h, w, self.out_dim)
        if camera_mask is not None and not camera_mask.any():
            return images.new_zeros(shape, dtype=torch.float32)
        every = camera_mask is None or bool(camera_mask.all())
        present = images.flatten(0, 1) if every else images[camera_mask]  # (n present, 3, H, W)
        # (x / 255 - mean) / std as one multiply and one subtract, in place on a float copy (never on the caller's)
        x = present.to(torch.float32, copy=True).mul_(self.scale).sub_(self.shift)
        resize = (height, width) != self.image_size
        if resize and self.image_size[0] != self.image_size[1]:
            # transformers interpolates only square position-embedding grids
            raise ValueError(f"images of {height}x{width} need an encoder built for that size, got {self.image_size}")
        tokens = self.vit(pixel_values=x, interpolate_pos_encoding=resize).last_hidden_state[:, 1:]  # drop [CLS]
        if every:  # no scatter into zeros: the ViT's output is already in camera order
            return tokens.reshape(shape)
        out = images.new_zeros(shape, dtype=torch.float32)
        out[camera_mask] = tokens.reshape(-1, h, w, self.out_dim)  # (n present, h, w, C)
        return out
