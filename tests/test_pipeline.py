from contextlib import nullcontext

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from addsr import AddSRPipeline
from addsr.colorfix import ColorFix, adain_color_fix, wavelet_color_fix
from addsr.io import resize_images
from addsr.model_folder import COLOR_FIX_FILE
from addsr.pipeline import build_prompt, condition_size

from conftest import TinyTagger


def lr_image(height=20, width=28, seed=0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, height, width, generator=generator)


def run(pipe, image, seed=0, **kwargs):
    kwargs.setdefault("process_size", 64)
    kwargs.setdefault("output_type", "pt")
    return pipe(image, generator=torch.Generator().manual_seed(seed), **kwargs)


def record_calls(module, store):
    """Record the (args, kwargs) of every forward call of ``module``."""
    return module.register_forward_pre_hook(lambda m, args, kwargs: store.append((args, kwargs)), with_kwargs=True)


@pytest.mark.parametrize("size", [(20, 28), (13, 9), (35, 21)])
def test_output_is_exactly_upscale_times_the_input(tiny_pipe, size):
    result = run(tiny_pipe, lr_image(*size), num_steps=1)
    assert result.images.shape == (1, 3, size[0] * 4, size[1] * 4)
    assert 0 <= result.images.min() and result.images.max() <= 1


def test_condition_size_follows_the_released_rule():
    assert condition_size(128, 200) == (512, 800)
    assert condition_size(33, 47, process_size=128) == (132 // 8 * 8, 188 // 8 * 8)
    short = 512 // 4 / 50
    assert condition_size(50, 75) == (int(short * 50) * 4 // 8 * 8, int(short * 75) * 4 // 8 * 8)


def test_small_input_uses_the_default_process_size(tiny_pipe):
    calls = []
    record_calls(tiny_pipe.controlnet, calls)
    result = run(tiny_pipe, lr_image(30, 40), num_steps=1, process_size=512)
    assert calls[0][1]["controlnet_cond"].shape[-2:] == (512, 680)  # short side 30 -> 128 -> x4
    assert result.images.shape[-2:] == (120, 160)


def test_same_seed_same_output_other_seed_other_output(tiny_pipe):
    image = lr_image()
    first, again, other = (run(tiny_pipe, image, seed=s, num_steps=2).images for s in (7, 7, 8))
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


@pytest.mark.parametrize("num_steps", [1, 2, 3, 4])
def test_num_steps_runs_the_first_student_timesteps(tiny_pipe, num_steps):
    calls = []
    record_calls(tiny_pipe.unet, calls)
    run(tiny_pipe, lr_image(), num_steps=num_steps)
    assert [int(args[1]) for args, _ in calls] == [999, 749, 499, 249][:num_steps]


def test_explicit_timesteps_override_num_steps(tiny_pipe):
    calls = []
    record_calls(tiny_pipe.unet, calls)
    run(tiny_pipe, lr_image(), num_steps=1, timesteps=[900, 300])
    assert [int(args[1]) for args, _ in calls] == [900, 300]
    with pytest.raises(ValueError, match="decrease"):
        run(tiny_pipe, lr_image(), timesteps=[300, 900])


def test_psr_weight_changes_the_condition_of_later_steps(tiny_pipe):
    conditions = {}
    for weight in (0.0, 1.0):
        calls = []
        hook = record_calls(tiny_pipe.controlnet, calls)
        run(tiny_pipe, lr_image(), num_steps=4, psr_weight=weight)
        hook.remove()
        conditions[weight] = [kwargs["controlnet_cond"] for _, kwargs in calls]
    without_psr, with_psr = conditions[0.0], conditions[1.0]
    assert torch.equal(without_psr[0], with_psr[0])
    for step in range(1, 4):
        assert torch.equal(without_psr[step], without_psr[0])  # w = 0: always the upscaled LR
        assert (with_psr[step] - without_psr[step]).abs().max() > 1e-3  # w = 1: the previous estimate


def test_image_embeddings_are_recomputed_for_each_psr_step(tiny_pipe):
    run(tiny_pipe, lr_image(), num_steps=3)
    calls = tiny_pipe.tagger.calls
    assert len(calls) == 3 and all(c.shape[-1] == TinyTagger.input_size for c in calls)


def test_matches_a_step_by_step_reading_of_the_spec(tiny_pipe):
    """The released sampler (`pipelines/pipeline_addsr.py`, `AddSRPipeline.__call__`) written out directly with the
    models, two steps, PSR weight 0.4, AdaIN."""
    pipe, lr, weight = tiny_pipe, lr_image(16, 24), 0.4
    generator = torch.Generator().manual_seed(3)
    c1 = resize_images(lr, (64, 96))
    lr_384 = F.interpolate(lr, size=(24, 24), mode="bilinear")
    prompt = f"{pipe.tagger.tags(lr_384)[0]}, {'a cat'}," + "clean"
    tokens = pipe.tokenizer([prompt], padding="max_length", max_length=24, truncation=True, return_tensors="pt")
    text = pipe.text_encoder(tokens.input_ids)[0]
    abar = pipe.schedule.alphas_cumprod
    start_noise = torch.randn(1, 4, 8, 12, generator=generator)
    posterior = pipe.vae.encode(c1 * 2 - 1).latent_dist
    lr_latent = (posterior.mean + posterior.std * torch.randn(1, 4, 8, 12, generator=generator)) * 0.18215
    z = abar[999].sqrt() * lr_latent + (1 - abar[999]).sqrt() * start_noise
    condition, embeds = c1, pipe.tagger.embeddings(lr_384)
    with torch.no_grad():
        for t, next_t in ((999, 749), (749, None)):
            down, mid = pipe.controlnet(z, t, encoder_hidden_states=text, controlnet_cond=condition,
                                        image_encoder_hidden_states=embeds, return_dict=False)[:2]
            eps = pipe.unet(z, t, encoder_hidden_states=text, image_encoder_hidden_states=embeds,
                            down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
            z0 = (z - (1 - abar[t]).sqrt() * eps) / abar[t].sqrt()
            if next_t is None:
                break
            z = abar[next_t].sqrt() * z0 + (1 - abar[next_t]).sqrt() * torch.randn(1, 4, 8, 12, generator=generator)
            x0 = pipe.vae.decode(z0 / 0.18215).sample.clamp(-1, 1)
            condition = weight * (x0 / 2 + 0.5) + (1 - weight) * c1
            embeds = pipe.tagger.embeddings(F.interpolate(condition, size=(24, 24), mode="bicubic"))
        restored = (pipe.vae.decode(z0 / 0.18215).sample / 2 + 0.5).clamp(0, 1)
    expected = adain_color_fix(restored, c1)
    result = pipe(lr, prompt="a cat", added_prompt="clean", num_steps=2, psr_weight=weight,
                  generator=torch.Generator().manual_seed(3), output_type="pt", process_size=64)
    assert result.prompts == [prompt]
    torch.testing.assert_close(result.images, expected, rtol=1e-4, atol=1e-4)


def test_cfg_doubles_the_batch_and_gives_image_embeddings_to_both_halves(tiny_pipe):
    calls = []
    record_calls(tiny_pipe.unet, calls)
    guided = run(tiny_pipe, lr_image(), num_steps=2, guidance_scale=3.0).images
    args, kwargs = calls[0]
    assert args[0].shape[0] == 2 and kwargs["image_encoder_hidden_states"].shape[0] == 2
    assert torch.equal(kwargs["image_encoder_hidden_states"][0], kwargs["image_encoder_hidden_states"][1])
    assert not torch.allclose(guided, run(tiny_pipe, lr_image(), num_steps=2).images)
    off = run(tiny_pipe, lr_image(), num_steps=2, guidance_scale=1.0).images
    assert torch.equal(off, run(tiny_pipe, lr_image(), num_steps=2, guidance_scale=0.0).images)


def test_batch_equals_single_images_with_per_image_generators(tiny_pipe):
    images = torch.cat([lr_image(seed=1), lr_image(seed=2)])
    generators = [torch.Generator().manual_seed(s) for s in (5, 6)]
    batch = tiny_pipe(images, num_steps=2, generator=generators, output_type="pt", process_size=64)
    for index, seed in enumerate((5, 6)):
        single = run(tiny_pipe, images[index : index + 1], seed=seed, num_steps=2)
        torch.testing.assert_close(batch.images[index : index + 1], single.images, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("start_point", ["lr", "noise"])
def test_start_points_differ_and_both_run(tiny_pipe, start_point):
    result = run(tiny_pipe, lr_image(), num_steps=1, start_point=start_point)
    assert result.images.shape == (1, 3, 80, 112)


def test_output_types(tiny_pipe):
    pil = run(tiny_pipe, lr_image(), num_steps=1, output_type="pil").images
    array = run(tiny_pipe, lr_image(), num_steps=1, output_type="np").images
    assert isinstance(pil[0], Image.Image) and pil[0].size == (112, 80)
    assert array.shape == (1, 80, 112, 3) and array.dtype == np.float32
    np.testing.assert_allclose(np.asarray(pil[0]) / 255.0, array[0], atol=0.5 / 255 + 1e-6)


def test_accepts_pil_and_uint8_arrays(tiny_pipe):
    array = (lr_image()[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    from_array = run(tiny_pipe, array, num_steps=1).images
    from_pil = run(tiny_pipe, Image.fromarray(array), num_steps=1).images
    assert torch.equal(from_array, from_pil)


def test_prompt_template():
    assert build_prompt("dog, grass", "", "clean") == "dog, grass, ,clean"
    assert build_prompt(None, "a cat", "clean") == "a cat,clean"
    assert build_prompt(None, "", "clean") == "clean"  # no tags, no prompt: no stray comma


def test_image_attention_without_tagger_is_refused(tiny_pipe):
    with pytest.raises(ValueError, match="needs\\s+a tagger"):
        AddSRPipeline(tiny_pipe.unet, tiny_pipe.controlnet, tiny_pipe.vae, tiny_pipe.text_encoder,
                      tiny_pipe.tokenizer)


def test_save_and_load_a_model_folder(plain_pipe, tmp_path):
    folder = plain_pipe.save_pretrained(tmp_path / "model")
    loaded = AddSRPipeline.from_pretrained(folder, device="cpu")
    assert loaded.tagger is None
    expected = run(plain_pipe, lr_image(), num_steps=2).images
    torch.testing.assert_close(run(loaded, lr_image(), num_steps=2).images, expected)


def test_a_model_folder_keeps_its_own_colour_fix(plain_pipe, tmp_path, monkeypatch):
    plain_folder = plain_pipe.save_pretrained(tmp_path / "plain")
    assert not (plain_folder / COLOR_FIX_FILE).exists()  # the released AdaIN needs no file
    monkeypatch.setattr(plain_pipe, "default_color_fix", ColorFix("wavelet", 2))
    folder = plain_pipe.save_pretrained(tmp_path / "model")
    loaded = AddSRPipeline.from_pretrained(folder, device="cpu")
    assert loaded.default_color_fix == ColorFix("wavelet", 2)
    image = lr_image(16, 24)
    own = run(loaded, image, num_steps=1).images
    torch.testing.assert_close(own, run(loaded, image, num_steps=1, color_fix="wavelet", wavelet_levels=2).images)
    assert torch.equal(run(loaded, image, num_steps=1, color_fix="wavelet").images, own)  # levels stay the model's
    assert not torch.allclose(run(loaded, image, num_steps=1, color_fix="adain").images, own)
    (folder / COLOR_FIX_FILE).write_text('{"method": "histogram"}')
    with pytest.raises(ValueError, match=f"{COLOR_FIX_FILE} is not a valid colour fix"):
        AddSRPipeline.from_pretrained(folder)


def test_missing_parts_come_from_the_base_folder(plain_pipe, tmp_path):
    plain_pipe.save_pretrained(tmp_path / "base")
    model = tmp_path / "addsr"
    plain_pipe.unet.save_pretrained(model / "unet")
    plain_pipe.controlnet.save_pretrained(model / "controlnet")
    with pytest.raises(FileNotFoundError, match="--base-model"):
        AddSRPipeline.from_pretrained(model)
    loaded = AddSRPipeline.from_pretrained(model, base_model_dir=tmp_path / "base", device="cpu")
    torch.testing.assert_close(run(loaded, lr_image(), num_steps=1).images,
                               run(plain_pipe, lr_image(), num_steps=1).images)


def test_bad_arguments_are_named(tiny_pipe):
    with pytest.raises(ValueError, match="psr_weight"):
        run(tiny_pipe, lr_image(), psr_weight=1.5)
    with pytest.raises(ValueError, match="2 prompts for 1 images"):
        run(tiny_pipe, lr_image(), prompt=["a", "b"])


def test_bad_colour_fixes_are_refused_before_any_model_runs(tiny_pipe):
    calls = []
    record_calls(tiny_pipe.unet, calls)
    with pytest.raises(ValueError, match="adain, wavelet, none"):
        run(tiny_pipe, lr_image(), color_fix="histogram")
    with pytest.raises(ValueError, match="wavelet levels"):
        run(tiny_pipe, lr_image(), color_fix="wavelet", wavelet_levels=0)
    assert calls == []


def test_wavelet_levels_reach_the_colour_fix(tiny_pipe):
    image = lr_image(16, 24)
    raw = run(tiny_pipe, image, num_steps=1, color_fix="none").images
    c1 = resize_images(image, (64, 96))
    for levels in (2, 5):
        fixed = run(tiny_pipe, image, num_steps=1, color_fix="wavelet", wavelet_levels=levels).images
        torch.testing.assert_close(fixed, wavelet_color_fix(raw, c1, levels), rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_runs_close_to_float32_with_the_vae_kept_safe(tiny_pipe, dtype):
    expected = run(tiny_pipe, lr_image(), num_steps=2).images
    with pytest.warns(UserWarning, match="float16 on a CPU") if dtype == torch.float16 else nullcontext():
        tiny_pipe.to("cpu", dtype)
    assert tiny_pipe.unet.dtype == dtype
    assert tiny_pipe.vae.dtype == (torch.float32 if dtype == torch.float16 else dtype)
    result = run(tiny_pipe, lr_image(), num_steps=2).images
    assert result.dtype == torch.float32 and torch.isfinite(result).all()
    assert (result - expected).abs().mean() < 0.05
