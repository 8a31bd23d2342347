import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

from addsr.training import (
    ProjectedDiscriminator,
    ProjectedDiscriminatorConfig,
    create_backbone,
    diff_augment,
    discriminator_hinge_loss,
    load_backbone_weights,
)
from addsr.training.diffaug import random_cutout, random_translation

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def feature_vit(seed: int = 0) -> VisionTransformer:
    torch.manual_seed(seed)
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2, num_classes=0)


def condition_vit(seed: int = 1) -> VisionTransformer:
    torch.manual_seed(seed)
    return VisionTransformer(img_size=28, patch_size=14, embed_dim=24, depth=2, num_heads=2, num_classes=0)


def tiny_discriminator(**overrides) -> ProjectedDiscriminator:
    config = ProjectedDiscriminatorConfig(feature_blocks=(1, 3), **overrides)
    torch.manual_seed(2)
    return ProjectedDiscriminator(feature_vit(), condition_vit(), config)


def images(batch: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def shifted(image: torch.Tensor, dy: int, dx: int, fill: float) -> torch.Tensor:
    """``out[i, j] = image[i + dy, j + dx]`` where that exists, else ``fill``."""
    _, height, width = image.shape
    out = torch.full_like(image, fill)
    rows = slice(max(0, -dy), min(height, height - dy))
    cols = slice(max(0, -dx), min(width, width - dx))
    out[:, rows, cols] = image[:, rows.start + dy: rows.stop + dy, cols.start + dx: cols.stop + dx]
    return out


# -- DiffAugment --------------------------------------------------------------------------------------


def test_translation_shifts_each_image_within_the_ratio():
    batch = images(4, 16)
    out = random_translation(batch, ratio=0.125, fill=0.5, generator=torch.Generator().manual_seed(3))
    shifts = []
    for image, result in zip(batch, out):
        found = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                 if torch.equal(shifted(image, dy, dx, 0.5), result)]
        assert len(found) == 1
        shifts.append(found[0])
    assert len(set(shifts)) > 1  # independent shifts per image


def test_translation_with_zero_ratio_is_identity():
    batch = images(2, 16)
    assert torch.equal(random_translation(batch, ratio=0.0, generator=torch.Generator().manual_seed(0)), batch)


def test_cutout_fills_one_clipped_rectangle_and_keeps_the_rest():
    batch = images(6, 20)
    out = random_cutout(batch, ratio=0.2, fill=-3.0, generator=torch.Generator().manual_seed(5))
    for image, result in zip(batch, out):
        filled = (result == -3.0).all(dim=0)
        assert torch.equal(result[:, ~filled], image[:, ~filled])
        rows, cols = filled.nonzero(as_tuple=True)
        assert 0 < len(rows) <= 16
        height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert len(rows) == height * width and height <= 4 and width <= 4


def test_diff_augment_is_differentiable_and_seeded():
    batch = images(2, 16).requires_grad_(True)
    first = diff_augment(batch, fill=0.5, generator=torch.Generator().manual_seed(1))
    again = diff_augment(batch, fill=0.5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(first, again)
    first.sum().backward()
    assert batch.grad is not None and batch.grad.abs().sum() > 0


def test_diff_augment_rejects_unknown_policy():
    with pytest.raises(ValueError, match="color"):
        diff_augment(images(1, 8), policy=("color",))


# -- the discriminator ----------------------------------------------------------------------------------


def test_features_are_block_outputs_with_cls_readout():
    discriminator = tiny_discriminator()
    vit = discriminator.features.model
    x = images(2)
    features = discriminator.features(x)
    reference = vit.forward_intermediates(x, indices=[1, 3], norm=False, intermediates_only=True,
                                          return_prefix_tokens=True, output_fmt="NLC")
    assert len(features) == 3  # patch embedding + blocks 1 and 3
    assert features[0].shape == (2, 32, 16)
    for feature, (patches, prefix) in zip(features[1:], reference):
        torch.testing.assert_close(feature, (patches + prefix[:, :1]).transpose(1, 2))


def test_logits_shape_and_gradients():
    discriminator = tiny_discriminator().train()
    x = images(3).requires_grad_(True)
    condition = discriminator.embed_condition(images(3, 40, seed=1))
    logits = discriminator(x, condition, torch.Generator().manual_seed(0))
    assert logits.shape == (3, 3 * 16)
    logits.mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in discriminator.heads.parameters())
    backbones = [*discriminator.features.model.parameters(), *discriminator.condition_network.parameters()]
    assert all(not p.requires_grad and p.grad is None for p in backbones)
    assert not discriminator.features.model.training and not discriminator.condition_network.training
    assert discriminator.heads.training


def test_condition_vector_is_the_normalised_cls_token():
    discriminator = tiny_discriminator()
    lr = images(2, 40, seed=4)
    resized = F.interpolate(lr, size=(28, 28), mode="bilinear")
    expected = discriminator.condition_network.forward_features((resized - IMAGENET_MEAN) / IMAGENET_STD)[:, 0]
    torch.testing.assert_close(discriminator.embed_condition(lr), expected)
    raw = tiny_discriminator(normalize_condition=False).embed_condition(lr)
    torch.testing.assert_close(raw, discriminator.condition_network.forward_features(resized)[:, 0])


def test_logits_depend_on_condition_and_seed():
    discriminator = tiny_discriminator().eval()  # no spectral-norm power iteration: repeated calls comparable
    x = images(2)
    condition = discriminator.embed_condition(images(2, 40, seed=1))
    other = discriminator.embed_condition(images(2, 40, seed=2))
    logits = discriminator(x, condition, torch.Generator().manual_seed(0))
    assert torch.equal(logits, discriminator(x, condition, torch.Generator().manual_seed(0)))
    assert not torch.allclose(logits, discriminator(x, other, torch.Generator().manual_seed(0)))
    assert not torch.allclose(logits, discriminator(x, condition, torch.Generator().manual_seed(1)))


def test_large_inputs_are_cropped_or_resized():
    x = images(2, 48, seed=3)
    cropped = tiny_discriminator(crop_probability=1.0)._fit_input_size(x, torch.Generator().manual_seed(0))
    for image, crop in zip(x, cropped):
        windows = image.unfold(1, 32, 1).unfold(2, 32, 1).permute(1, 2, 0, 3, 4)
        assert (windows == crop).flatten(2).all(dim=2).any()
    resized = tiny_discriminator(crop_probability=0.0)._fit_input_size(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(resized, F.interpolate(x, size=(32, 32), mode="area"))
    assert tiny_discriminator()(x, torch.zeros(2, 24)).shape == (2, 48)


def test_hinge_training_separates_real_from_fake():
    discriminator = tiny_discriminator()
    optimizer = torch.optim.AdamW(discriminator.heads.parameters(), lr=1e-3)
    real = images(2, seed=5).mul(0.2).add(0.4)
    fake = images(2, seed=6)
    condition = discriminator.embed_condition(real)
    losses = []
    for step in range(6):
        generator = torch.Generator().manual_seed(step)
        real_logits = discriminator(real, condition, generator)
        loss = discriminator_hinge_loss(real_logits, discriminator(fake, condition, generator))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


# -- loading backbones ------------------------------------------------------------------------------------


def test_load_backbone_weights_maps_original_dinov2_keys(tmp_path):
    source = feature_vit(seed=7)
    state_dict = dict(source.state_dict())
    state_dict["mask_token"] = torch.zeros(1, 32)  # present in the original DINOv2 checkpoints, absent in timm
    torch.save(state_dict, tmp_path / "dinov2.pth")
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, tmp_path / "vit.safetensors")
    for name in ("dinov2.pth", "vit.safetensors"):
        target = load_backbone_weights(feature_vit(seed=8), tmp_path / name)
        for key, value in source.state_dict().items():
            assert torch.equal(target.state_dict()[key], value), key


def test_missing_backbone_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_backbone_weights(feature_vit(), tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="feature_checkpoint"):
        create_backbone("vit_small_patch16_224.dino", None)
