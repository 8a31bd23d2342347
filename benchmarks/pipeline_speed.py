"""Seconds per image, peak memory and a per-stage breakdown of AddSRPipeline, every stage beside the floor its FLOPs
imply at this device's measured matmul throughput; optionally side by side with the released AddSR pipeline.

Models: the shipped small model (default), ``--model DIR``, or ``--random-sd2``: Stable Diffusion 2 base-sized U-Net,
ControlNet, VAE, text encoder and a Swin-L RAM tagger with random weights (no files needed), the released
architecture's cost. Stages: tagger, text encoder, VAE encode, each ControlNet and U-Net call, each PSR decode
(and the tagger's re-embedding of its condition), the final decode, the colour fix; "other" is the rest (resizes,
noise, tile blending). FLOPs are counted with ``torch.utils.flop_counter`` on the first (warm-up) run; the floor is
FLOPs / (matmul FLOP/s of a large square matmul in the run's dtype, measured here), so "of floor" is the share of
the hardware's matmul speed a stage reaches. Memory: peak RSS of this process on a CPU (sampled every 10 ms), peak
allocated memory on CUDA. Nothing here is a test; figures and commands go to docs/performance.md.

``--released AUTHORS_CHECKOUT`` first times the released pipeline (``pipelines/pipeline_addsr.py`` driven the way
``test_addsr.py`` drives it) on the same input, in a child process whose ``PYTHONPATH`` is
``--released-pythonpath``: the libraries the released code was written for, set up once with

    pip install --target /tmp/olddiff --no-deps diffusers==0.25.0 huggingface_hub==0.20.3 \\
        transformers==4.37.2 tokenizers==0.15.2 opencv-python-headless

The authors' code is imported from that checkout, never copied. Their pipeline assumes CUDA; on a CPU the child
redirects its ``device='cuda'`` tensors and ``.cuda()`` calls to the CPU and runs their RAM in float32, and since
their RAM class needs fairscale and downloads BERT's tokenizer, addsr's RAMTagger (the same Swin-L and tag head)
stands in for it, with random weights like every other model.

    python benchmarks/pipeline_speed.py --steps 1 2 3 4 --size 128 512 --dtype float32 bfloat16 --threads 2
    python benchmarks/pipeline_speed.py --random-sd2 --size 128 --steps 4 --threads 2 \\
        --released /tmp/ref/addsr --released-pythonpath /tmp/olddiff
    python benchmarks/pipeline_speed.py --random-sd2 --device cuda --dtype float16 bfloat16 --compare-float32
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from PIL import Image

SD2_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
    use_image_cross_attention=True,
)
SD2_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=768,
)
SD2_TEXT = dict(
    vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=23,
    max_position_embeddings=77, hidden_act="gelu", projection_dim=512,
)
SD2_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                     prediction_type="epsilon")
SRC = Path(__file__).resolve().parents[1] / "src"
RELEASED_SETTINGS = dict(  # test_addsr.py's defaults, with AdaIN (its default colour fix) and no seed
    prompt="", added_prompt="clean, high-resolution, 8k, extremely detailed, best quality, sharp",
    negative_prompt="dotted, noise, blur, lowres, smooth", guidance_scale=0.0, conditioning_scale=1.0,
    num_inference_steps=4, process_size=512, vae_tiled_size=224, latent_tiled_size=320, latent_tiled_overlap=4,
    upscale=4, start_point="lr", align_method="adain",
)


# -- measuring ---------------------------------------------------------------------------------------------------

def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_flops_per_second(device: torch.device, dtype: torch.dtype, side: int = 4096) -> float:
    """Best of five square ``side`` matmuls in ``dtype``: the device's practical peak."""
    a = torch.randn(side, side, device=device).to(dtype)
    b = torch.randn(side, side, device=device).to(dtype)
    best = float("inf")
    for _ in range(6):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * side**3 / best


class PeakMemory:
    """Peak RSS of this process (CPU, sampled by a thread) or peak allocated memory (CUDA) since ``reset``."""

    def __init__(self, device: torch.device, interval: float = 0.01):
        self.device, self.interval, self.peak = device, interval, 0
        self._stop = threading.Event()
        if device.type != "cuda":
            import psutil

            self._process = psutil.Process()
            threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.peak = self._process.memory_info().rss

    def read(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device)
        return max(self.peak, self._process.memory_info().rss)


@dataclass
class Event:
    kind: str
    seconds: float
    flops: int = 0


class StageClock:
    """Times every call of the named modules (forward pre/post hooks) and, while ``counter`` is set, counts their
    FLOPs; ``record`` adds a timed span from outside a module (the colour fix). The hooks run outside compiled
    code (``torch.compiler.disable``): traced, they would make compiled modules recompile for every stage."""

    def __init__(self, modules: list[tuple[str, torch.nn.Module]], device: torch.device):
        self.device, self.events, self.counter = device, [], None
        self._started: dict[int, tuple[float, int]] = {}
        for kind, module in modules:
            module.register_forward_pre_hook(lambda m, a, kind=kind: self._start(m))
            module.register_forward_hook(lambda m, a, o, kind=kind: self._stop(m, kind))

    def _flops(self) -> int:
        return self.counter.get_total_flops() if self.counter is not None else 0

    @torch.compiler.disable
    def _start(self, module: torch.nn.Module) -> None:
        synchronize(self.device)
        self._started[id(module)] = (time.perf_counter(), self._flops())

    @torch.compiler.disable
    def _stop(self, module: torch.nn.Module, kind: str) -> None:
        synchronize(self.device)
        start, flops = self._started.pop(id(module))
        self.events.append(Event(kind, time.perf_counter() - start, self._flops() - flops))

    def record(self, kind: str, function, *args):
        synchronize(self.device)
        start, flops = time.perf_counter(), self._flops()
        result = function(*args)
        synchronize(self.device)
        self.events.append(Event(kind, time.perf_counter() - start, self._flops() - flops))
        return result


def flop_counter():
    """FlopCounterMode that also counts the CPU flash attention kernel (missing from PyTorch's table)."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def cpu_flash_attention(query, key, value, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(query, key, value)

    return FlopCounterMode(display=False, custom_mapping={
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_flash_attention})


def stages(events: list[Event], num_steps: int) -> list[tuple[str, int, float, int]]:
    """``(label, calls, seconds, flops)`` per stage: consecutive ControlNet/U-Net calls are one step (all tiles);
    decodes before the last step are PSR decodes."""
    totals: dict[str, list] = {}
    step, previous = 0, None
    for event in events:
        if event.kind in ("controlnet", "unet") and previous not in ("controlnet", "unet"):
            step += 1
        previous = event.kind
        label = {
            "tagger": "tagger" if step == 0 else f"tagger (PSR {step + 1})", "tag head": "tag head",
            "text": "text encoder", "encode": "VAE encode",
            "controlnet": f"ControlNet {step}", "unet": f"U-Net {step}",
            "decode": f"PSR decode {step + 1}" if step < num_steps else "final decode",
            "colorfix": "colour fix",
        }[event.kind]
        entry = totals.setdefault(label, [label, 0, 0.0, 0])
        entry[1] += 1
        entry[2] += event.seconds
        entry[3] += event.flops
    return [tuple(entry) for entry in totals.values()]


@dataclass
class Run:
    """One timed run and what it was."""

    pipeline: str
    setting: str
    lr_size: int
    steps: int
    seconds: float
    peak_bytes: int
    stages: list = field(default_factory=list)
    all_seconds: list = field(default_factory=list)


def print_run(run: Run, flops_per_second: float) -> None:
    print(f"\n== {run.pipeline}: {run.setting} ==")
    print(f"{'stage':22s} {'calls':>5s} {'seconds':>8s} {'GFLOP':>9s} {'floor s':>8s} {'of floor':>8s}")
    for label, calls, seconds, flops in run.stages:
        floor = flops / flops_per_second
        share = f"{floor / seconds:8.0%}" if seconds > 0 and flops else f"{'':8s}"
        print(f"{label:22s} {calls:5d} {seconds:8.2f} {flops / 1e9:9.1f} {floor:8.2f} {share}")
    staged = sum(stage[2] for stage in run.stages)
    flops = sum(stage[3] for stage in run.stages)
    print(f"{'other':22s} {'':5s} {run.seconds - staged:8.2f}")
    floor = flops / flops_per_second
    repeats = ", ".join(f"{seconds:.2f}" for seconds in run.all_seconds)
    print(f"{'total (s/image)':22s} {'':5s} {run.seconds:8.2f} {flops / 1e9:9.1f} {floor:8.2f} "
          f"{floor / run.seconds:8.0%}   runs: {repeats}; peak memory {run.peak_bytes / 2**30:.2f} GiB")


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    name = platform.processor()
    try:
        name = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name}, {os.cpu_count()} CPUs"


# -- our pipeline -----------------------------------------------------------------------------------------------

def random_sd2_pipeline():
    from transformers import CLIPTextConfig, CLIPTextModel

    from addsr import AddSRPipeline
    from addsr.models import ControlNet, UNet
    from addsr.models.presets import byte_level_clip_tokenizer
    from addsr.tagging import RAMConfig, RAMTagger
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    unet = UNet(**SD2_UNET)
    tagger = RAMTagger(RAMConfig(), tag_list=[f"tag{i}" for i in range(RAMConfig().num_classes)])
    return AddSRPipeline(
        unet=unet, controlnet=ControlNet.from_unet(unet), vae=AutoencoderKL(**SD2_VAE),
        text_encoder=CLIPTextModel(CLIPTextConfig(**SD2_TEXT)), tokenizer=byte_level_clip_tokenizer(77), tagger=tagger,
    )


def clocked_pipeline(pipe, device: torch.device) -> StageClock:
    """A clock on the pipeline's stages; the colour fix is timed by wrapping ``ColorFix.__call__``."""
    from addsr import ColorFix

    modules = [("text", pipe.text_encoder), ("encode", pipe.vae.encoder), ("decode", pipe.vae.decoder),
               ("controlnet", pipe.controlnet), ("unet", pipe.unet)]
    if pipe.tagger is not None:
        modules += [("tagger", pipe.tagger.visual_encoder.layers), ("tag head", pipe.tagger.tag_head)]
    if pipe.psr_decoder is not None:
        modules.append(("decode", pipe.psr_decoder.decoder))
    clock = StageClock(modules, device)
    plain_call = ColorFix.__call__
    ColorFix.__call__ = lambda self, image, reference: clock.record("colorfix", plain_call, self, image, reference)
    return clock


def time_ours(pipe, clock: StageClock, memory: PeakMemory, image: Image.Image, steps: int, tile, repeats: int,
              count_flops: bool) -> tuple[Run, torch.Tensor]:
    """The fastest of ``repeats`` runs (other jobs on a shared machine only add time) and its output; with
    ``count_flops`` a first, untimed run counts each stage's FLOPs."""
    flops_by_label = {}
    if count_flops:
        with flop_counter() as counter:
            clock.counter, clock.events = counter, []
            pipe(image, num_steps=steps, tile=tile, generator=torch.Generator().manual_seed(0))
        clock.counter = None
        flops_by_label = {label: flops for label, _, _, flops in stages(clock.events, steps)}
    runs, outputs = [], []
    for _ in range(repeats):
        clock.events = []
        memory.reset()
        synchronize(pipe.device)
        start = time.perf_counter()
        output = pipe(image, num_steps=steps, tile=tile, generator=torch.Generator().manual_seed(0), output_type="pt")
        synchronize(pipe.device)
        seconds = time.perf_counter() - start
        labelled = [(label, calls, spent, flops_by_label.get(label, 0))
                    for label, calls, spent, _ in stages(clock.events, steps)]
        runs.append(Run("ours", "", image.width, steps, seconds, memory.read(), labelled))
        outputs.append(output.images)
    best = min(range(repeats), key=lambda index: runs[index].seconds)
    runs[best].all_seconds = [run.seconds for run in runs]
    return runs[best], outputs[best]


# -- the released pipeline (runs in a child process with the released code's libraries) ---------------------------

def import_addsr_modules() -> None:
    """Make addsr's tagger and schedule importable without ``addsr/__init__``, which needs today's diffusers."""
    package = types.ModuleType("addsr")
    package.__path__ = [str(SRC / "addsr")]
    sys.modules["addsr"] = package


def cuda_calls_on_cpu() -> None:
    """The released pipeline creates tensors on ``'cuda'`` and calls ``.cuda()``; put them on the CPU instead."""
    make_tensor = torch.tensor

    def tensor(*args, device=None, **kwargs):
        return make_tensor(*args, device="cpu" if str(device).startswith("cuda") else device, **kwargs)

    torch.tensor = tensor
    torch.Tensor.cuda = lambda self, *args, **kwargs: self


class ReleasedRAMStandIn(torch.nn.Module):
    """addsr's RAMTagger answering the released RAM's calls; kept in float32 on the CPU (float16 is emulated)."""

    def __init__(self, tagger):
        super().__init__()
        self.tagger = tagger

    def to(self, *args, **kwargs):
        return self

    def cuda(self, *args, **kwargs):
        return self

    def generate_image_embeds(self, images: torch.Tensor) -> torch.Tensor:
        return self.tagger.embeddings(images.float())


def stub_released_ram(stand_in: ReleasedRAMStandIn) -> None:
    """Modules ``ram`` and ``ram.models.ram_lora`` as ``test_addsr.py`` and ``pipeline_addsr.py`` import them."""
    ram = types.ModuleType("ram")
    ram.__path__ = []
    ram.get_transform = None
    ram.inference_ram = lambda images, model: (model.tagger.tags(images.float())[0], "")
    models = types.ModuleType("ram.models")
    lora = types.ModuleType("ram.models.ram_lora")
    lora.ram = lambda **kwargs: stand_in
    sys.modules.update({"ram": ram, "ram.models": models, "ram.models.ram_lora": lora})


def released_scheduler(repo: Path):
    """The released ``utils/scheduling_ddpm.py`` (diffusers' DDPMScheduler plus ``get_z0``), loaded as the
    diffusers module it is written to replace."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("diffusers.schedulers.scheduling_ddpm_addsr",
                                                  repo / "utils" / "scheduling_ddpm.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.DDPMScheduler(**SD2_SCHEDULER)


def released_upscale(pipe, stand_in: ReleasedRAMStandIn, image: Image.Image, clock: StageClock) -> Image.Image:
    """``test_addsr.main``'s work for one image: its prompt and RAM embeddings, its resizes, the pipeline call,
    the colour fix and the final resize."""
    import test_addsr
    from utils.wavelet_color_fix import adain_color_fix

    settings = argparse.Namespace(**RELEASED_SETTINGS)
    prompt, ram_states = test_addsr.get_validation_prompt(settings, image, stand_in, device="cpu")
    width, height, scale = image.width, image.height, settings.upscale
    condition = image
    if width < settings.process_size // scale or height < settings.process_size // scale:
        factor = (settings.process_size // scale) / min(width, height)
        condition = condition.resize((int(factor * width), int(factor * height)))
    condition = condition.resize((condition.width * scale, condition.height * scale))
    condition = condition.resize((condition.width // 8 * 8, condition.height // 8 * 8))
    result = pipe(
        prompt + settings.added_prompt, condition, num_inference_steps=settings.num_inference_steps,
        generator=torch.Generator().manual_seed(0), height=condition.height, width=condition.width,
        guidance_scale=settings.guidance_scale, negative_prompt=settings.negative_prompt,
        conditioning_scale=settings.conditioning_scale, start_point=settings.start_point,
        ram_encoder_hidden_states=ram_states, args=settings,
    ).images[0]
    result = clock.record("colorfix", adain_color_fix, result, condition)
    return result.resize((width * scale, height * scale))


def released_pipeline(repo: Path, tokenizer: Path, unet_config: dict, vae_config: dict, text_config: dict,
                      tagger_config=None):
    """The released ``StableDiffusionControlNetPipeline`` built as ``test_addsr.load_addsr_pipeline`` builds it,
    with random weights, and the RAM stand-in its module creates on import."""
    sys.path.insert(0, str(repo))
    import_addsr_modules()
    cuda_calls_on_cpu()
    from addsr.tagging import RAMConfig, RAMTagger

    torch.manual_seed(0)
    tagger_config = tagger_config or RAMConfig()
    tags = [f"tag{i}" for i in range(tagger_config.num_classes)]
    stand_in = ReleasedRAMStandIn(RAMTagger(tagger_config, tag_list=tags)).eval()
    stub_released_ram(stand_in)
    from diffusers import AutoencoderKL
    from models.controlnet import ControlNetModel
    from models.unet_2d_condition import UNet2DConditionModel
    from pipelines.pipeline_addsr import StableDiffusionControlNetPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizerFast

    unet = UNet2DConditionModel(**unet_config)
    pipe = StableDiffusionControlNetPipeline(
        vae=AutoencoderKL(**vae_config), text_encoder=CLIPTextModel(CLIPTextConfig(**text_config)),
        tokenizer=CLIPTokenizerFast.from_pretrained(tokenizer), unet=unet,
        controlnet=ControlNetModel.from_unet(unet, use_image_cross_attention=True), scheduler=released_scheduler(repo),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe._init_tiled_vae(decoder_tile_size=RELEASED_SETTINGS["vae_tiled_size"])
    pipe.set_progress_bar_config(disable=True)
    return pipe, stand_in


def released_child(args: argparse.Namespace) -> None:
    """Build the released pipeline at SD2 size with random weights and time it as test_addsr.py runs it."""
    pipe, stand_in = released_pipeline(Path(args.released).resolve(), args.tokenizer, SD2_UNET, SD2_VAE, SD2_TEXT)
    device = torch.device("cpu")
    clock = StageClock([("tagger", stand_in.tagger.visual_encoder.layers), ("tag head", stand_in.tagger.tag_head),
                        ("text", pipe.text_encoder), ("encode", pipe.vae.encoder), ("decode", pipe.vae.decoder),
                        ("controlnet", pipe.controlnet), ("unet", pipe.unet)], device)
    image = Image.open(args.image).convert("RGB")
    memory = PeakMemory(device)
    with torch.no_grad():
        with flop_counter() as counter:
            clock.counter, clock.events = counter, []
            released_upscale(pipe, stand_in, image, clock)
        clock.counter = None
        flops_by_label = {label: flops for label, _, _, flops in stages(clock.events, 4)}
        runs = []
        for _ in range(args.repeats):
            clock.events = []
            memory.reset()
            start = time.perf_counter()
            released_upscale(pipe, stand_in, image, clock)
            seconds = time.perf_counter() - start
            labelled = [(label, calls, spent, flops_by_label.get(label, 0))
                        for label, calls, spent, _ in stages(clock.events, 4)]
            runs.append(Run("released", "", image.width, 4, seconds, memory.read(), labelled))
    best = min(runs, key=lambda run: run.seconds)
    best.all_seconds = [run.seconds for run in runs]
    print("RESULT " + json.dumps(asdict(best)), flush=True)


def run_released(args: argparse.Namespace, image_path: Path, work: Path) -> Run:
    """The released pipeline timed in a child process with the released code's libraries first on its path."""
    from addsr.models.presets import byte_level_clip_tokenizer

    byte_level_clip_tokenizer(77).save_pretrained(work / "tokenizer")
    path = [str(args.released_pythonpath)] if args.released_pythonpath else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path), "HF_HUB_OFFLINE": "1",
           "PYTHONWARNINGS": "ignore::FutureWarning"}
    command = [sys.executable, __file__, "--released", str(args.released), "--released-child", "--image",
               str(image_path), "--tokenizer", str(work / "tokenizer"), "--repeats", str(args.repeats),
               "--threads", str(torch.get_num_threads())]
    result = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, check=True)
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))
    return Run(**json.loads(line.removeprefix("RESULT ")))


def load_ours(args: argparse.Namespace):
    from addsr import AddSRPipeline

    if args.plain:  # time the pipeline without addsr.speedups' layout and upsampling changes
        import addsr.pipeline

        addsr.pipeline.speed_up = lambda model, device: model
    if args.random_sd2:
        pipe = random_sd2_pipeline()
    else:
        pipe = AddSRPipeline.from_pretrained(args.model, base_model_dir=args.base_model)
    if args.psr_decoder == "random":  # TAESD's shape with random weights: its cost, not its quality
        from addsr.training.decoder import DecoderModelConfig

        torch.manual_seed(0)
        pipe.use_psr_decoder(DecoderModelConfig().build(pipe.vae))
    elif args.psr_decoder:
        pipe.use_psr_decoder(args.psr_decoder)
    pipe.progress_bar = False
    return pipe


def psnr(image: torch.Tensor, reference: torch.Tensor) -> float:
    """PSNR in dB of ``[0, 1]`` float images."""
    return float(10 * torch.log10(1 / (image.float() - reference.float()).pow(2).mean()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help="model folder (unet/, controlnet/, ... ram/); default: the shipped model")
    source.add_argument("--random-sd2", action="store_true", help="SD2-base-sized models with random weights")
    parser.add_argument("--base-model", help="SD2 base folder for parts --model lacks")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", nargs="+", default=["auto"], help="one or more: auto, float32, bfloat16, float16")
    parser.add_argument("--size", type=int, nargs="+", default=[128], help="LR side(s) in pixels (output is 4x)")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--tile", default="auto", help="the pipeline's tile: auto, 0 (untiled) or LR pixels")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per setting after the counting run")
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP-counting run (long runs: no floor)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--compare-float32", action="store_true", help="also report each dtype's distance from "
                        "float32 (max and mean |diff|, PSNR)")
    parser.add_argument("--psr-decoder", help="decode the PSR conditions with this small decoder folder; 'random': "
                        "one of TAESD's shape with random weights (for its cost)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the models first (AddSRPipeline.compile)")
    parser.add_argument("--plain", action="store_true", help="without addsr.speedups (layout, upsampling)")
    parser.add_argument("--released", type=Path, help="the authors' AddSR checkout: time the released pipeline "
                        "on the same inputs first (with --random-sd2, on a CPU, 4 steps)")
    parser.add_argument("--released-pythonpath", type=Path, help="folder with diffusers 0.25 and transformers 4.37")
    parser.add_argument("--json", type=Path, help="also write every run to this JSON file")
    parser.add_argument("--released-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--image", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.released_child:
        released_child(args)
        return
    if args.released and not args.random_sd2:
        parser.error("--released compares at full size: add --random-sd2")

    from addsr.devices import resolve_device, resolve_dtype

    device = resolve_device(args.device)
    print(f"{time.strftime('%Y-%m-%d %H:%M')}  {machine()}, torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads, load average {os.getloadavg()[0]:.2f}\ncommand: python {' '.join(sys.argv)}")
    runs, outputs = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        images = {}
        for size in args.size:
            pixels = torch.rand(size, size, 3, generator=torch.Generator().manual_seed(1)).mul(255).byte().numpy()
            images[size] = Image.fromarray(pixels)
            images[size].save(Path(tmp) / f"lr{size}.png")
        if args.released:
            throughput = matmul_flops_per_second(torch.device("cpu"), torch.float32)
            for size in args.size:
                run = run_released(args, Path(tmp) / f"lr{size}.png", Path(tmp))
                run.setting = f"random SD2, cpu float32, LR {size} -> {4 * size}, 4 steps"
                print_run(run, throughput)
                runs.append(run)
        pipe = load_ours(args)
        clock = clocked_pipeline(pipe, device)
        memory = PeakMemory(device)
        for dtype_name in args.dtype:
            dtype = resolve_dtype(dtype_name, device)
            pipe.to(device, dtype)
            if args.compile:
                pipe.compile()
            throughput = matmul_flops_per_second(device, dtype)
            print(f"\nmatmul throughput, {device.type} {dtype}: {throughput / 1e9:.0f} GFLOP/s")
            for size in args.size:
                for steps in args.steps:
                    run, output = time_ours(pipe, clock, memory, images[size], steps, tile_argument(args.tile),
                                            args.repeats, count_flops=not args.no_flops)
                    model = "random SD2" if args.random_sd2 else (args.model or "shipped small model")
                    run.setting = (f"{model}, {device.type} {str(dtype).removeprefix('torch.')}, LR {size} -> "
                                   f"{4 * size}, {steps} steps, tile {args.tile}"
                                   + (", PSR decoder " + args.psr_decoder if args.psr_decoder else "")
                                   + (", compiled" if args.compile else "") + (", plain" if args.plain else ""))
                    print_run(run, throughput)
                    runs.append(run)
                    outputs[dtype, size, steps] = output
        if args.compare_float32:
            compare_with_float32(pipe, device, images, args, outputs)
        if args.compile:
            compare_with_uncompiled(load_ours(args), device, images, args, outputs)
    released = {run.lr_size: run.seconds for run in runs if run.pipeline == "released"}
    for run in runs:
        if run.pipeline == "ours" and run.steps == 4 and run.lr_size in released:
            print(f"ours / released ({run.setting}): {run.seconds / released[run.lr_size]:.3f}")
    if args.json:
        args.json.write_text(json.dumps([asdict(run) for run in runs], indent=1) + "\n")


def tile_argument(text: str):
    return text if text == "auto" else int(text)


def compare_with_float32(pipe, device, images, args, outputs) -> None:
    """Each half-precision output against the float32 output of the same setting."""
    pending = [key for key in outputs if key[0] != torch.float32]
    if not pending:
        return
    pipe.to(device, torch.float32)
    for dtype, size, steps in pending:
        reference = outputs.get((torch.float32, size, steps))
        if reference is None:
            reference = run_once(pipe, images[size], steps, args)
        print_distance(f"{dtype} vs float32, LR {size}, {steps} steps", outputs[dtype, size, steps], reference)


def compare_with_uncompiled(plain, device, images, args, outputs) -> None:
    """Each compiled output against the uncompiled pipeline's output of the same setting (and that one run's
    seconds, its first)."""
    for dtype, size, steps in outputs:
        plain.to(device, dtype)
        start = time.perf_counter()
        reference = run_once(plain, images[size], steps, args)
        label = f"compiled vs not ({time.perf_counter() - start:.2f} s), {dtype}, LR {size}, {steps} steps"
        print_distance(label, outputs[dtype, size, steps], reference)


def run_once(pipe, image: Image.Image, steps: int, args: argparse.Namespace) -> torch.Tensor:
    return pipe(image, num_steps=steps, tile=tile_argument(args.tile), generator=torch.Generator().manual_seed(0),
                output_type="pt").images


def print_distance(label: str, output: torch.Tensor, reference: torch.Tensor) -> None:
    difference = (output.float() - reference.float()).abs()
    print(f"{label}: max |diff| {difference.max():.2e}, mean {difference.mean():.2e}, PSNR "
          f"{psnr(output, reference):.2f} dB (images in [0, 1])")


if __name__ == "__main__":
    main()
