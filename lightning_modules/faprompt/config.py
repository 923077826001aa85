"""FAPrompt settings; every default is the authors' code (mala-lab/FAPrompt), the place is named beside it.

FAPrompt's code is AnomalyCLIP's with another prompt learner (``FAPrompt.py``) and scoring (``train.py``,
``test.py``), so the frozen-CLIP settings are AnomalyCLIP's (:class:`AnomalyCLIPBaseConfig`): OpenAI
ViT-L-14-336 with QuickGELU (``AnomalyCLIP_lib.load("ViT-L/14@336px")``) at 518 px (``--image_size 518`` in
train.sh / test.sh), the position embedding resized bilinearly (``VisionTransformer.forward``), DPAM on
blocks 6..24 (``DAPM_replace(DPAM_layer=20)``), deep text tokens 4 wide in text blocks 2..9 (``--t_n_ctx 4
--depth 9``) rounded to float16 per prompt copy (``.half()`` in ``ResidualAttentionBlock_learnable_token``),
the class embedding without ``ln_post`` (``x_ori[0, :, :] @ self.proj``), temperature 0.07
(``compute_similarity``), Adam(1e-3, betas (0.5, 0.999)) (train.py, ``--learning_rate 0.001``).
"""

from __future__ import annotations

import dataclasses

from lightning_modules.anomalyclip.config import AnomalyCLIPBaseConfig

#: ``prior_selection`` values: ``first`` is the authors' code, ``top_abnormal`` the paper's description.
PRIOR_SELECTIONS = ("first", "top_abnormal")


@dataclasses.dataclass
class FAPromptConfig(AnomalyCLIPBaseConfig):
    name: str = "faprompt"
    # The maps come from the last block's V-V tokens only (VisionTransformer.forward: ``patch_tokens = x``
    # after every block; ``--features_list 6 12 18 24`` is passed but not used for the maps): one layer.
    map_layers: list[int] = dataclasses.field(default_factory=lambda: [24])
    # test.py ``--sigma`` (default 10; test.sh does not set it): scipy's gaussian_filter on the 518 px map.
    gaussian_sigma: float = 10.0
    # --- compound abnormality prompts (FAPrompt.py) ---------------------------------------------------
    normal_prompt_length: int = 5  # ``n_ctx_pos = 5``: "[N1..N5] object." (``--n_ctx 12`` is unused)
    abnormal_prompt_length: int = 2  # ``n_ctx_neg = 2``: "[N1..N5][A1 A2] damaged object."
    num_abnormal_prompts: int = 10  # ``self.num_p = 10`` abnormality prompts, averaged into one text
    # --- data-dependent abnormality prior (FAPrompt.py ``patch_meta_net``, train.py / test.py) ----------
    prior_tokens: int = 10  # ``self.k = 10`` patch embeddings concatenated into the meta-net's input
    prior_reduction: int = 16  # hidden width of the meta-net: ``768 * k // 16``
    # Which patches: "first": the first ``prior_tokens`` patches of the grid in reading order, what their
    # code does (it computes the top-10 abnormal patches, ``pk_indx``, but indexes the patches with the loop
    # counter); "top_abnormal": the ``prior_tokens`` patches with the highest abnormality probability under
    # the static prompts, as the paper describes the prior (a deviation from their code).
    prior_selection: str = "first"
    # --- loss (train.py) ------------------------------------------------------------------------------
    static_map_loss_weight: float = 1.0  # focal + Dice + Dice on the maps of the static prompts
    prior_map_loss_weight: float = 0.5  # the same on the maps of the prompts with the prior
    score_loss_weight: float = 1.0  # ``image_loss2``: BinaryFocalLoss (on logits) of the fused image score
    decorrelation_loss_weight: float = 0.1  # ``0.1 * loss_ab``: sum of |cos| between the abnormality prompts
    prior_loss_weight: float = 1.0  # ``loss_bias``: sum over normal images of MSE(prior, 0)
