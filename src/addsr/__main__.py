"""``python -m addsr``, as ``accelerate launch -m addsr upscale ...`` runs it in each process."""

from .cli import app

app(prog_name="addsr")
