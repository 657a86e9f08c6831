"""ViT image encoder (Dosovitskiy et al. 2021) on `transformers.ViTModel`, run on all cameras of a batch at once.

Random init from a `ViTConfig`, or `from_pretrained` of a local directory (never a download). Only the cameras that
are present are encoded; missing ones get zero features.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import ViTConfig, ViTModel

# the normalisation of the google/vit-* checkpoints (ViTImageProcessor defaults)
_MEAN, _STD = 0.5, 0.5


class ImageEncoder(nn.Module):
    """Images <B, C, 3, H, W> uint8 -> patch tokens <B, C, h, w, out_dim> (h = H // patch, w = W // patch)."""

    def __init__(self, hidden: int = 192, layers: int = 4, heads: int = 3, patch: int = 16,
                 image_size: tuple[int, int] = (96, 160), pretrained_dir: str | None = None,
                 mlp_ratio: float = 4.0):  # fmt: skip
        super().__init__()
        if pretrained_dir is not None:
            self.vit = ViTModel.from_pretrained(pretrained_dir, add_pooling_layer=False, local_files_only=True)
        else:
            config = ViTConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                               intermediate_size=int(hidden * mlp_ratio), patch_size=patch,
                               image_size=list(image_size))  # fmt: skip
            self.vit = ViTModel(config, add_pooling_layer=False)
        cfg = self.vit.config
        self.patch = cfg.patch_size
        size = cfg.image_size if isinstance(cfg.image_size, (list, tuple)) else (cfg.image_size, cfg.image_size)
        self.image_size = tuple(int(s) for s in size)  # (H, W) the position embeddings were made for
        self.out_dim = cfg.hidden_size

    def forward(self, images: torch.Tensor, camera_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, c, _, height, width = images.shape
        h, w = height // self.patch, width // self.patch
        shape = (b, c, h, w, self.out_dim)
        if camera_mask is not None and not camera_mask.any():
            return images.new_zeros(shape, dtype=torch.float32)
        every = camera_mask is None or bool(camera_mask.all())
        present = images.flatten(0, 1) if every else images[camera_mask]  # (n present, 3, H, W)
        # (x / 255 - mean) / std as one multiply and one subtract, in place on a float copy (never on the caller's)
        x = present.to(torch.float32, copy=True).mul_(1.0 / (255.0 * _STD)).sub_(_MEAN / _STD)
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
