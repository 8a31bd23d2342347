"""RAMTagger: RAM's checkpoint layout, DAPE LoRA merging, tag decoding, preprocessing, save/load."""

import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from addsr.tagging import RAMConfig, RAMFileError, RAMTagger, Tagger
from addsr.tagging.checkpoint import our_key_to_ram, ram_key_to_ours

from ram_cases import (
    LORA_RANK,
    TAGS,
    TINY,
    UNUSED_RAM_KEYS,
    original_layout,
    random_dape,
    random_tiny_model,
    write_files,
)


def load(paths: dict[str, Path], **kwargs) -> RAMTagger:
    return RAMTagger.from_checkpoints(
        paths["ram"], tag_list=paths["tags"], tag_thresholds=paths["thresholds"], config=TINY, **kwargs
    )


@pytest.fixture
def model() -> RAMTagger:
    return random_tiny_model()


@pytest.fixture
def images() -> torch.Tensor:
    torch.manual_seed(2)
    return torch.rand(2, 3, 32, 32)


def test_is_a_tagger_and_embeds_pooled_then_patch_tokens(model, images):
    assert isinstance(model, Tagger) and model.input_size == 32
    embeddings = model.embeddings(images)
    assert embeddings.shape == (2, TINY.num_tokens, TINY.embed_dim)
    assert embeddings.shape[1] == 1 + 4 * 4  # 32 px / patch 4 / one patch merging
    assert RAMConfig().num_tokens == 145  # Swin-L at 384 px: pooled token + 12x12 patches
    # image_proj is affine, so the projected pooled token is the mean of the projected patch tokens
    torch.testing.assert_close(embeddings[:, 0], embeddings[:, 1:].mean(dim=1), atol=1e-5, rtol=1e-5)


def test_preprocess_resizes_bilinear_then_normalises(model):
    torch.manual_seed(3)
    images = torch.rand(1, 3, 50, 70)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    resized = F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(model.preprocess(images), (resized - mean) / std)
    exact = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(model.preprocess(exact), (exact - mean) / std)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model.preprocess(torch.rand(3, 32, 32))


def test_key_mapping_matches_the_original_layout(model):
    ours = model.state_dict()
    expected_names = set(original_layout(model)) - set(UNUSED_RAM_KEYS)
    assert {our_key_to_ram(key) for key in ours} == expected_names
    assert all(ram_key_to_ours(our_key_to_ram(key)) == key for key in ours)
    assert ram_key_to_ours("visual_encoder.layers.0.downsample.reduction.weight") == (
        "visual_encoder.layers.1.downsample.reduction.weight"
    )
    assert ram_key_to_ours("vision_multi.encoder.layer.1.output.dense.bias") == "tag_head.layers.1.fc2.bias"
    assert ram_key_to_ours("text_decoder.bert.encoder.layer.0.output.dense.bias") is None


def test_original_checkpoint_loads_with_no_missing_or_unused_keys(tmp_path, model, images):
    paths = write_files(tmp_path, model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load(paths, strict=True)
    (report,) = loaded.load_reports
    assert report.missing == [] and report.unexpected == [] and report.mismatched == []
    assert len(report.used) == len(model.state_dict())
    assert sorted(key for keys in report.known_unused.values() for key in keys) == sorted(UNUSED_RAM_KEYS)
    expected, actual = model(images), loaded(images)
    torch.testing.assert_close(actual.embeddings, expected.embeddings)
    torch.testing.assert_close(actual.logits, expected.logits)


def lora_on_the_fly(linear: torch.nn.Linear, lora_a: torch.Tensor, lora_b: torch.Tensor, chunks: tuple[bool, ...]):
    """Adds ``(x A_g^T) B_g^T / rank`` to the enabled output chunks of ``linear`` at every call."""
    chunk = linear.out_features // len(chunks)

    def hook(module, inputs, output):
        low_rank = (inputs[0] @ lora_a.T).split(LORA_RANK, dim=-1)
        updates = [h @ b.T for h, b in zip(low_rank, lora_b.split(chunk))]
        zeros = output.new_zeros(*output.shape[:-1], chunk)
        parts = [updates.pop(0) if on else zeros for on in chunks]
        return output + torch.cat(parts, dim=-1) / LORA_RANK

    linear.register_forward_hook(hook)


def test_merged_dape_equals_lora_applied_on_the_fly(tmp_path, model, images):
    paths = write_files(tmp_path, model)
    dape = random_dape(model)
    torch.save(dape, tmp_path / "dape.pth")
    merged = load(paths, dape=tmp_path / "dape.pth")
    dape_report = merged.load_reports[1]
    assert dape_report.missing == [] and dape_report.unexpected == [] and dape_report.mismatched == []
    captioning_lora = ["text_decoder.bert.encoder.layer.0.attention.self.query.lora_A"]
    assert list(dape_report.known_unused.values()) == [captioning_lora]
    assert "tag_encoder.encoder.layer.0.crossattention.self.query.lora_A" in dape_report.used

    reference = load(paths)
    for key in dape:
        if not key.endswith(".lora_A") or key.startswith("text_decoder"):
            continue
        name = key.removesuffix(".lora_A").replace("tag_encoder.", "tagging_head.")
        target = reference.get_submodule(ram_key_to_ours(f"{name}.weight").removesuffix(".weight"))
        chunks = (True, False, True) if name.endswith("qkv") else (True,)
        lora_on_the_fly(target, dape[key], dape[key.replace("lora_A", "lora_B")], chunks)
    expected, actual = reference(images), merged(images)
    assert not torch.allclose(actual.embeddings, model(images).embeddings, atol=1e-3)  # the LoRA matters
    torch.testing.assert_close(actual.embeddings, expected.embeddings, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(actual.logits, expected.logits, atol=1e-5, rtol=1e-5)


def test_dape_with_missing_lora_is_rejected(tmp_path, model):
    paths = write_files(tmp_path, model)
    dape = random_dape(model)
    del dape["visual_encoder.layers.1.blocks.1.attn.qkv.lora_B"]
    del dape["tagging_head.encoder.layer.1.crossattention.self.key.lora_A"]
    del dape["tagging_head.encoder.layer.1.crossattention.self.key.lora_B"]
    dape["visual_encoder.layers.0.blocks.0.attn.qkv.lora_A"] = torch.zeros(3 * LORA_RANK, 8)  # q, k and v
    torch.save(dape, tmp_path / "dape.pth")
    with pytest.raises(RAMFileError) as error:
        load(paths, dape=tmp_path / "dape.pth")
    message = str(error.value)
    assert "missing visual_encoder.layers.1.blocks.1.attn.qkv.lora_B" in message
    assert "tagging_head.encoder.layer.1.crossattention.self.key.lora_A/lora_B" in message
    assert "visual_encoder.layers.0.blocks.0.attn.qkv: lora_A (6, 8) / lora_B (16, 2) do not fit" in message


def logit(probability: float) -> float:
    return torch.logit(torch.tensor(probability, dtype=torch.float64)).item()


def test_tags_use_per_class_thresholds_in_tag_list_order():
    thresholds = [0.5, 0.9, 0.68, 0.3, 0.99, 0.68]
    model = random_tiny_model(class_thresholds=thresholds)
    above = [logit(t + 0.005) for t in thresholds]
    below = [logit(t - 0.005) for t in thresholds]
    logits = torch.tensor([
        [above[0], below[1], above[2], above[3], below[4], below[5]],
        below,
        [below[0], above[1], below[2], below[3], above[4], above[5]],
    ])
    assert model.decode_tags(logits) == ["cat, tree, sky", "", "dog, car, house"]
    default = random_tiny_model()  # no threshold file: the global threshold 0.68 for every tag
    assert default.decode_tags(torch.tensor([[logit(0.675), logit(0.685)] * 3])) == ["dog, sky, house"]


def test_tags_come_from_the_tag_head(model, images):
    tags = model.tags(images)
    assert tags == model.decode_tags(model.tag_head(model.embeddings(images)))
    assert len(tags) == 2 and all(tag in TAGS for text in tags for tag in text.split(", ") if text)


def test_save_and_from_pretrained_round_trip(tmp_path, images):
    model = random_tiny_model(class_thresholds=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    model.save_pretrained(tmp_path / "ram")
    assert sorted(p.name for p in (tmp_path / "ram").iterdir()) == [
        "config.json", "model.safetensors", "tag_list.txt", "tag_thresholds.txt"
    ]
    loaded = RAMTagger.from_pretrained(tmp_path / "ram")
    assert loaded.config == model.config and loaded.tag_list == TAGS
    assert loaded.class_thresholds == model.class_thresholds
    torch.testing.assert_close(loaded(images).logits, model(images).logits)
    weights = tmp_path / "ram" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(RAMFileError, match="cannot load .*model.safetensors"):
        RAMTagger.from_pretrained(tmp_path / "ram")
    (tmp_path / "ram" / "tag_list.txt").unlink()
    with pytest.raises(RAMFileError, match="tag_list.txt is missing"):
        RAMTagger.from_pretrained(tmp_path / "ram")


def test_runs_in_bfloat16(model, images):
    reference = model(images).embeddings
    model.to(dtype=torch.bfloat16)
    embeddings = model.embeddings(images)
    assert embeddings.dtype == torch.bfloat16
    torch.testing.assert_close(embeddings.float(), reference, atol=0.1, rtol=0.1)
    assert len(model.tags(images)) == 2


def test_truncated_checkpoint_names_the_expected_file(tmp_path, model):
    paths = write_files(tmp_path, model)
    data = paths["ram"].read_bytes()
    paths["ram"].write_bytes(data[: len(data) // 2])
    with pytest.raises(RAMFileError, match=r"ram_swin_large_14m\.pth.*\n.*truncated"):
        load(paths)


def test_wrong_files_are_rejected_with_what_was_expected(tmp_path, model):
    paths = write_files(tmp_path, model)
    torch.save({"model": {"conv_in.weight": torch.zeros(2)}}, paths["ram"])
    with pytest.raises(RAMFileError, match=r"does not look like RAM's ram_swin_large_14m\.pth"):
        load(paths)
    torch.save(random_dape(model), paths["ram"])
    with pytest.raises(RAMFileError, match="pass it as the DAPE file"):
        load(paths)
    paths["ram"].write_text("not a checkpoint")
    with pytest.raises(RAMFileError, match="cannot read"):
        load(paths)
    with pytest.raises(RAMFileError, match="does not exist"):
        RAMTagger.from_checkpoints(tmp_path / "absent.pth", tag_list=paths["tags"], config=TINY)


def test_missing_and_misshaped_parameters_are_named(tmp_path, model):
    state = original_layout(model)
    del state["tagging_head.encoder.layer.1.output.LayerNorm.bias"]
    state["image_proj.weight"] = torch.zeros(3, 3)
    paths = write_files(tmp_path, model)
    torch.save({"model": state}, paths["ram"])
    with pytest.raises(RAMFileError) as error:
        load(paths)
    assert "missing tagging_head.encoder.layer.1.output.LayerNorm.bias" in str(error.value)
    assert "image_proj.weight: shape (3, 3) in file, (12, 16) expected" in str(error.value)


def test_unexpected_keys_warn_or_raise_when_strict(tmp_path, model):
    paths = write_files(tmp_path, model)
    torch.save({"model": original_layout(model) | {"mystery.weight": torch.zeros(1)}}, paths["ram"])
    with pytest.warns(UserWarning, match="mystery.weight"):
        loaded = load(paths)
    assert loaded.load_reports[0].unexpected == ["mystery.weight"]
    with pytest.raises(RAMFileError, match="mystery.weight"):
        load(paths, strict=True)


def test_tag_files_must_match_the_model(tmp_path, model):
    paths = write_files(tmp_path, model)
    paths["thresholds"].write_text("0.5\n0.6\n")
    with pytest.raises(RAMFileError, match="2 thresholds but the tag list has 6 tags"):
        load(paths)
    paths["thresholds"].write_text("0.5\nhigh\n")
    with pytest.raises(RAMFileError, match="one number a line"):
        load(paths)
    paths["tags"].write_text("cat\ndog\n")
    with pytest.raises(RAMFileError, match="has 2 tags; the RAM config expects 6"):
        RAMTagger.from_checkpoints(paths["ram"], tag_list=paths["tags"], config=TINY)
