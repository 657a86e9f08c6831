import pytest
import torch

from fusion.models.image_encoder import ImageEncoder


def test_patch_tokens_per_camera_and_missing_cameras_are_zero():
    torch.manual_seed(0)
    enc = ImageEncoder(hidden=32, layers=1, heads=2, patch=16, image_size=(96, 160))
    images = torch.randint(0, 256, (2, 6, 3, 96, 160), dtype=torch.uint8)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 2] = False
    out = enc(images, mask)
    assert out.shape == (2, 6, 6, 10, 32) and enc.out_dim == 32
    assert torch.isfinite(out).all()
    assert out[1, 2].abs().sum() == 0 and out[1, 3].abs().sum() > 0
    # a camera's tokens depend on its own image only: the present cameras match a run of that camera alone
    alone = enc(images[1:2, 3:4])
    torch.testing.assert_close(alone[0, 0], out[1, 3], atol=1e-5, rtol=1e-5)


def test_no_camera_gives_zeros_and_square_encoders_interpolate():
    enc = ImageEncoder(hidden=32, layers=1, heads=2, patch=16, image_size=(64, 64))
    images = torch.randint(0, 256, (1, 6, 3, 96, 160), dtype=torch.uint8)
    assert enc(images, torch.zeros(1, 6, dtype=torch.bool)).abs().sum() == 0
    assert enc(images).shape == (1, 6, 6, 10, 32)
    rect = ImageEncoder(hidden=32, layers=1, heads=2, patch=16, image_size=(96, 160))
    with pytest.raises(ValueError, match="96x96"):
        rect(images[..., :96, :96])


def test_pretrained_dir_round_trip(tmp_path):
    enc = ImageEncoder(hidden=32, layers=1, heads=2, patch=16, image_size=(64, 64))
    enc.vit.save_pretrained(tmp_path)
    loaded = ImageEncoder(pretrained_dir=str(tmp_path))
    images = torch.randint(0, 256, (1, 2, 3, 64, 64), dtype=torch.uint8)
    torch.testing.assert_close(loaded(images), enc(images))


def test_normalisation_matches_the_vit_processor_and_leaves_the_input_alone():
    """Every camera present (the view path) and one missing (the masked path) both feed the ViT the google/vit-*
    normalisation (x / 255 - 0.5) / 0.5 of each image, and a float input is not modified in place."""
    torch.manual_seed(0)
    enc = ImageEncoder(hidden=32, layers=1, heads=2, patch=16, image_size=(96, 160)).eval()
    images = torch.randint(0, 256, (2, 3, 3, 96, 160), dtype=torch.uint8)
    pixels = (images.flatten(0, 1).float() / 255.0 - 0.5) / 0.5
    reference = enc.vit(pixel_values=pixels).last_hidden_state[:, 1:].reshape(2, 3, 6, 10, 32)
    with torch.no_grad():
        torch.testing.assert_close(enc(images), reference.detach(), atol=1e-5, rtol=1e-5)
        mask = torch.tensor([[True, False, True], [True, True, True]])
        masked = enc(images, mask)
        torch.testing.assert_close(masked[mask], reference.detach()[mask], atol=1e-5, rtol=1e-5)
        assert torch.equal(masked[~mask], torch.zeros_like(masked[~mask]))  # the missing camera: zero features
        as_float = images.float()
        enc(as_float)
        assert torch.equal(as_float, images.float())
