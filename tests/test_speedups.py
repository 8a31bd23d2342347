"""Speed without surprises: the same-output speed-ups (addsr.speedups, the tagger's single pass, the prompt cache)
leave the output as it was, every option that changes the output is off by default, float16 on a CPU warns, and
CPU threads follow a container's quota."""

import inspect
import os
import warnings

import pytest
import torch
from diffusers import AutoencoderTiny
from diffusers.models.upsampling import Upsample2D

import addsr.pipeline
import addsr.speedups
from addsr import AddSRPipeline
from addsr.cli import upscale
from addsr.devices import available_cpus, limit_cpu_threads
from addsr.speedups import TransposedConvUpsample2D, use_transposed_conv_upsampling

from conftest import TinyTagger, build_pipe
from test_ram import random_tiny_model


def lr_image(height=20, width=28) -> torch.Tensor:
    return torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0))


def run(pipe, image, **kwargs):
    kwargs = {"num_steps": 4, "process_size": 64, "output_type": "pt", **kwargs}
    return pipe(image, generator=torch.Generator().manual_seed(0), **kwargs).images


def random_upsampler(channels=8, out_channels=6) -> Upsample2D:
    torch.manual_seed(0)
    return Upsample2D(channels, use_conv=True, out_channels=out_channels)


@pytest.mark.parametrize("size", [(5, 7), (1, 1), (6, 4)])
def test_transposed_conv_upsampling_equals_nearest_upsampling_then_the_convolution(size):
    upsampler, x = random_upsampler(), torch.randn(2, 8, *size)
    expected = upsampler(x)
    keys = set(upsampler.state_dict())
    assert use_transposed_conv_upsampling(upsampler) == 1 and type(upsampler) is TransposedConvUpsample2D
    torch.testing.assert_close(upsampler(x), expected, atol=1e-5, rtol=0)
    assert set(upsampler.state_dict()) == keys
    odd = (2 * size[0] + 1, 2 * size[1] + 1)  # not a doubling: the plain path
    torch.testing.assert_close(upsampler(x, output_size=odd), Upsample2D.forward(upsampler, x, output_size=odd))


def test_the_kept_kernel_follows_the_weight_and_gradients_match():
    plain, fast, x = random_upsampler(), random_upsampler(), torch.randn(1, 8, 4, 4)
    use_transposed_conv_upsampling(fast)
    with torch.no_grad():
        fast(x)
        for upsampler in (plain, fast):
            upsampler.conv.weight.mul_(2)  # in place: the kept kernel is stale
        torch.testing.assert_close(fast(x), plain(x), atol=1e-5, rtol=0)
    plain(x).square().sum().backward()
    fast(x).square().sum().backward()
    torch.testing.assert_close(fast.conv.weight.grad, plain.conv.weight.grad, atol=1e-4, rtol=1e-5)


def test_narrow_upsamplers_are_left_as_they_are():
    assert use_transposed_conv_upsampling(random_upsampler(), min_channels=256) == 0


def plain_pipe(monkeypatch, **kwargs) -> AddSRPipeline:
    """A tiny pipeline moved without addsr.speedups (what `to` did before them)."""
    with monkeypatch.context() as patch:
        patch.setattr(addsr.pipeline, "speed_up", lambda model, device: model)
        return build_pipe(**kwargs)


@pytest.mark.parametrize("tile", [0, 8])
def test_the_speedups_leave_the_output_unchanged(monkeypatch, tile):
    monkeypatch.setattr(addsr.speedups, "WIDE_CHANNELS", 1)  # the tiny models are narrow
    plain, fast = plain_pipe(monkeypatch), build_pipe()
    assert fast.vae.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert any(type(module) is TransposedConvUpsample2D for module in fast.vae.modules())
    assert any(type(module) is TransposedConvUpsample2D for module in fast.unet.modules())
    image = lr_image(40, 56)
    expected, result = run(plain, image, tile=tile), run(fast, image, tile=tile)
    assert (result - expected).abs().max() <= 1e-4


def test_narrow_models_such_as_the_shipped_one_are_left_as_they_are():
    pipe = build_pipe()
    assert not any(type(module) is TransposedConvUpsample2D for module in pipe.unet.modules())
    assert pipe.vae.decoder.conv_in.weight.is_contiguous()


def test_off_the_measured_devices_models_are_left_as_they_are(monkeypatch):
    monkeypatch.setattr(addsr.speedups, "WIDE_CHANNELS", 1)
    monkeypatch.setattr(addsr.speedups, "MEASURED_DEVICES", ())
    pipe = build_pipe()
    assert not any(type(module) is TransposedConvUpsample2D for module in pipe.unet.modules())
    assert pipe.vae.decoder.conv_in.weight.is_contiguous()


class CountingTagger(TinyTagger):
    """A TinyTagger that can give tags and embeddings from one pass, counting its passes."""

    def __init__(self):
        super().__init__()
        self.passes = 0

    def tags_and_embeddings(self, images):
        self.passes += 1
        return self.tags(images), self.embeddings(images)


def test_the_first_step_tags_and_embeds_in_one_pass():
    def call(pipe):
        return pipe(lr_image(), num_steps=3, process_size=64, output_type="pt",
                    generator=torch.Generator().manual_seed(0))

    tagger = CountingTagger()
    result = call(build_pipe(tagger=tagger))
    assert tagger.passes == 1 and len(tagger.calls) == 3  # one pass for tags + first embeddings, then 2 PSR steps
    expected = call(build_pipe())  # a TinyTagger without tags_and_embeddings: tags() and embeddings()
    assert result.prompts == expected.prompts
    torch.testing.assert_close(result.images, expected.images, atol=0, rtol=0)


def test_ram_gives_tags_and_embeddings_from_one_pass():
    model, images = random_tiny_model(), torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    tags, embeddings = model.tags_and_embeddings(images)
    assert tags == model.tags(images)
    torch.testing.assert_close(embeddings, model.embeddings(images), atol=0, rtol=0)


def test_a_repeated_prompt_is_encoded_once_until_the_pipeline_moves():
    pipe = build_pipe(image_attention=False)
    calls = []
    pipe.text_encoder.register_forward_pre_hook(lambda module, args: calls.append(1))
    first, again = run(pipe, lr_image(), num_steps=1), run(pipe, lr_image(), num_steps=1)
    assert len(calls) == 1 and torch.equal(first, again)
    run(pipe, lr_image(), num_steps=1, prompt="other words")
    assert len(calls) == 2
    pipe.to("cpu", torch.float32)
    run(pipe, lr_image(), num_steps=1)
    assert len(calls) == 3


def tiny_decoder(upsamplings: int = 3) -> AutoencoderTiny:
    torch.manual_seed(5)
    channels = (8,) * (upsamplings + 1)
    return AutoencoderTiny(encoder_block_out_channels=channels, decoder_block_out_channels=channels,
                           num_encoder_blocks=(1,) * len(channels), num_decoder_blocks=(1,) * len(channels),
                           latent_channels=4, scaling_factor=1.0)


def test_a_psr_decoder_decodes_the_psr_conditions_and_the_vae_the_image():
    pipe = build_pipe()
    calls = {"vae": 0, "psr": 0}
    pipe.vae.decoder.register_forward_pre_hook(lambda module, args: calls.__setitem__("vae", calls["vae"] + 1))
    decoder = tiny_decoder()
    decoder.decoder.register_forward_pre_hook(lambda module, args: calls.__setitem__("psr", calls["psr"] + 1))
    expected = run(pipe, lr_image())
    calls.update(vae=0, psr=0)
    result = run(pipe.use_psr_decoder(decoder), lr_image())
    assert calls == {"vae": 1, "psr": 3}
    assert (result - expected).abs().max() > 1e-3
    torch.testing.assert_close(run(pipe.use_psr_decoder(None), lr_image()), expected, atol=0, rtol=0)
    with pytest.raises(ValueError, match="upsamples x4, the VAE x8"):
        pipe.use_psr_decoder(tiny_decoder(upsamplings=2))


def test_a_psr_decoder_folder_loads_with_the_speedups(tmp_path, monkeypatch):
    monkeypatch.setattr(addsr.speedups, "WIDE_CHANNELS", 1)
    tiny_decoder().save_pretrained(tmp_path / "decoder")
    pipe = build_pipe().use_psr_decoder(tmp_path / "decoder")
    assert isinstance(pipe.psr_decoder, AutoencoderTiny)
    assert pipe.psr_decoder.decoder.layers[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_compile_runs_every_network_of_the_pipeline_compiled_in_whole_graphs(monkeypatch):
    """The VAE and PSR decoder are called through encode/decode, which compiling a module's forward misses; the
    same-output speed-ups (forced onto the tiny models) must not break the compiled graphs."""
    monkeypatch.setattr(addsr.speedups, "WIDE_CHANNELS", 1)
    torch._dynamo.reset()
    pipe = build_pipe().use_psr_decoder(tiny_decoder())
    expected = run(pipe, lr_image())
    graphs = []

    def recording_backend(graph, example_inputs):
        graphs.append((graph, example_inputs))
        return graph.forward

    assert pipe.compile(backend=recording_backend) is pipe
    torch._dynamo.utils.counters.clear()
    compiled = run(pipe, lr_image())
    assert not torch._dynamo.utils.counters["graph_break"], dict(torch._dynamo.utils.counters["graph_break"])
    traced = {id(t) for graph, inputs in graphs for t in [*graph.parameters(), *inputs]}
    for name, module in [("unet", pipe.unet), ("controlnet", pipe.controlnet), ("vae encoder", pipe.vae.encoder),
                         ("vae decoder", pipe.vae.decoder), ("psr decoder", pipe.psr_decoder.decoder)]:
        assert any(id(p) in traced for p in module.parameters()), f"the {name} did not run compiled"
    torch.testing.assert_close(compiled, expected, atol=1e-5, rtol=0)
    torch._dynamo.reset()


def test_every_output_changing_option_is_off_by_default():
    pipe = AddSRPipeline.from_pretrained(device="cpu")
    assert pipe.dtype == torch.float32 and pipe.psr_decoder is None
    assert all(getattr(module, "_compiled_call_impl", None) is None for module in pipe._compiled_modules())
    defaults = {name: parameter.default for name, parameter in inspect.signature(upscale).parameters.items()}
    assert defaults["dtype"] == "auto" and defaults["psr_decoder"] is None and defaults["compile"] is False


def test_float16_on_a_cpu_warns_and_bfloat16_does_not():
    pipe = build_pipe()
    with pytest.warns(UserWarning, match="bfloat16"):
        pipe.to("cpu", torch.float16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipe.to("cpu", torch.bfloat16)


def test_casting_says_nothing_about_modules_kept_in_float32(capfd):
    """diffusers' ModelMixin.to logs that (empty) list on every cast to another dtype."""
    pipe = build_pipe()
    capfd.readouterr()
    pipe.to("cpu", torch.bfloat16)
    assert "should be kept in float32" not in capfd.readouterr().err


@pytest.mark.parametrize("cpu_max, expected", [("150000 100000", 2), ("50000 100000", 1), ("max 100000", None)])
def test_threads_follow_a_container_quota(tmp_path, monkeypatch, cpu_max, expected):
    (tmp_path / "cpu.max").write_text(cpu_max + "\n")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert available_cpus(tmp_path / "cpu.max") == (expected or 8)
    assert available_cpus(tmp_path / "missing") == 8
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        limit_cpu_threads(tmp_path / "cpu.max")
        assert torch.get_num_threads() == min(4, expected or 8)
    finally:
        torch.set_num_threads(threads)
