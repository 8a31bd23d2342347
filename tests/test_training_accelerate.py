"""A two-process TA-ADD run on CPU (gloo) under ``accelerate launch``, as a multi-GPU run is launched."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from addsr import AddSRPipeline
from addsr.training import DEFAULT_TRAINABLE
from addsr.config import config_to_dict

from training_cases import build_workspace, model_weights, selected_by

TESTS = Path(__file__).resolve().parent

SCRIPT = """
import os
import sys
from pathlib import Path

import training_cases  # registers the tiny discriminator backbones with timm
from addsr.config import load_config
from addsr.training.config import DistillationConfig
from addsr.training.distill import train_distill

checkpoint = train_distill(load_config(sys.argv[1], DistillationConfig))
Path(sys.argv[2], f"done-{os.environ['RANK']}").write_text(str(checkpoint))
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_process_run_completes_and_writes_a_checkpoint(tmp_path):
    workspace = build_workspace(tmp_path / "workspace")
    output = tmp_path / "run"
    config = workspace.distillation(
        output, optimization={"batch_size": 1, "gradient_accumulation_steps": 2, "max_steps": 2}
    )
    (tmp_path / "distill.yaml").write_text(yaml.safe_dump(config_to_dict(config)))
    (tmp_path / "train.py").write_text(SCRIPT)
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()), str(tmp_path / "train.py"), str(tmp_path / "distill.yaml"),
        str(tmp_path),
    ]
    environment = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1",
                   "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    checkpoint = output / "checkpoints" / "step-000002"
    for rank in (0, 1):  # both processes finished with the same checkpoint
        assert (tmp_path / f"done-{rank}").read_text() == str(checkpoint)
    state = json.loads((checkpoint / "training_state" / "state.json").read_text())
    assert (state["step"], state["world_size"]) == (2, 2)
    initial, trained = model_weights(workspace.base), model_weights(checkpoint)
    changed = {key for key in initial if not torch.equal(initial[key], trained[key])}
    assert changed and all(selected_by(key, DEFAULT_TRAINABLE) for key in changed)
    AddSRPipeline.from_pretrained(checkpoint, device="cpu")
