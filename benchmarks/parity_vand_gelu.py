"""VAND parity at an input size other than the model's native one: the authors' exact-GELU rebuild.

    python benchmarks/parity_vand_gelu.py --official /tmp/vand --official-env /tmp/vand-env [--write-fixture]

The same comparison as benchmarks/parity_vand.py (same files, heads, training step and metrics), but the
authors' side loads the parity CLIP as their test.py loads OpenAI's: ``create_model_and_transforms(model,
240, pretrained="openai")``. Their ``load_openai_model`` builds it from the state dict with QuickGELU and
float16 weights (``build_model_from_openai_state_dict``) at its native 160 px; since 240 differs, their
factory rebuilds ``CLIP(**config)`` from the model's config, which has no ``quick_gelu``, resizes the
position embeddings (``resize_pos_embed``, bicubic) and loads the weights: exact GELU in both towers, as
ViT-L-14-336 at 518 px. The one shim: the weights file is registered as the model's "openai" download
and found where it already is (``cache_dir``). zsad builds the "-quickgelu" twin (what OpenAI's weights
run as, like its ViT-L-14-336-quickgelu) with the same float16-rounded weights and ``activation: authors``
switches it to GELU; with ``activation=quick_gelu`` the maps leave the tolerance (the CI test's negative
control).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import parity_support as ps  # noqa: E402
import parity_vand as pv  # noqa: E402

GELU = pv.Case(
    ps.FIXTURES / "vand_gelu.npz",
    official_model=ps.PARITY_MODEL_OPENAI,
    zsad_model=f"{ps.PARITY_MODEL_OPENAI}-quickgelu",
    openai=True,
)

if __name__ == "__main__":
    pv.run_parity(GELU, __doc__, __file__)
