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


def _pretrained_folder(path, dtype=torch.bfloat16, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
    """A ViT saved as a Hugging Face folder in `dtype`, with an ImageNet-normalising processor config (DeiT's)."""
    import json

    torch.manual_seed(3)
    vit = ImageEncoder(hidden=32, layers=1, heads=2, patch=16, image_size=(96, 160)).vit
    vit.to(dtype).save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps({"image_mean": list(mean), "image_std": list(std)}))
    return vit.float()


def test_a_pretrained_folder_loads_in_float32_with_its_own_normalisation(tmp_path):
    """A folder saved in bfloat16 loads as float32 (the detector runs float32 weights), and the pixels are normalised
    with the folder's processor mean and std per channel, as its `ViTImageProcessor` would."""
    vit = _pretrained_folder(tmp_path)
    enc = ImageEncoder(pretrained_dir=str(tmp_path)).eval()
    assert {p.dtype for p in enc.parameters()} == {torch.float32}
    images = torch.randint(0, 256, (1, 2, 3, 96, 160), dtype=torch.uint8)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    pixels = (images.flatten(0, 1).float() / 255.0 - mean) / std
    with torch.no_grad():
        want = vit.eval()(pixel_values=pixels).last_hidden_state[:, 1:].reshape(1, 2, 6, 10, 32)
        torch.testing.assert_close(enc(images), want, atol=1e-5, rtol=1e-5)
    with pytest.raises(FileNotFoundError, match="vit_pretrained_dir"):
        ImageEncoder(pretrained_dir=str(tmp_path / "missing"))


def test_a_checkpoint_trained_from_a_pretrained_folder_loads_without_it(tmp_path):
    """The checkpoint keeps the folder's ViT config and normalisation (`vit_config`), so prediction, evaluation and
    the app load it on a machine without the folder, with the same outputs."""
    import dataclasses
    import shutil

    from fusion.models.model import TINY
    from fusion.system import DetectionSystem, load_system

    folder = tmp_path / "vit"
    _pretrained_folder(folder)
    system = DetectionSystem(model=dataclasses.replace(TINY, vit_pretrained_dir=str(folder))).eval()
    stored = system.hparams["model"]["vit_config"]
    assert stored["image_std"] == pytest.approx([0.229, 0.224, 0.225]) and stored["vit"]["hidden_size"] == 32
    ckpt = tmp_path / "last.ckpt"
    torch.save({"hyper_parameters": dict(system.hparams), "state_dict": system.state_dict()}, ckpt)  # as Lightning
    shutil.rmtree(folder)
    loaded, _ = load_system(ckpt)
    images = torch.randint(0, 256, (1, 6, 3, 96, 160), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.image_encoder(images), system.model.image_encoder(images))


def test_a_non_square_pretrained_vit_for_other_image_sizes_is_refused_at_build(tmp_path):
    """transformers interpolates only square position-embedding grids: a non-square folder for images of another size
    is refused when the model is built, naming the folder, not at the first forward."""
    _pretrained_folder(tmp_path)  # made for 96 x 160
    with pytest.raises(ValueError, match=f"{tmp_path}.*96x160.*64x64"):
        ImageEncoder(pretrained_dir=str(tmp_path), image_size=(64, 64))
    assert ImageEncoder(pretrained_dir=str(tmp_path), image_size=(96, 160)).image_size == (96, 160)
