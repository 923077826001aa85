"""What every method's LightningModule shares: the evaluation loop and trimmed checkpoints."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from datamodules.errors import ZsadError
from lightning_modules.checkpoint_io import read_checkpoint
from lightning_modules.eval_config import EvalConfig

if TYPE_CHECKING:
    from lightning_modules.metrics.category_scores import CategoryScoreRule

#: Reads a checkpoint in a method's authors' format: (module, checkpoint dict, file) -> trainable state.
OfficialReader = Callable[[Any, dict[str, Any], str], dict[str, torch.Tensor]]


class ZeroShotModule(L.LightningModule):
    """Subclasses implement :meth:`predict_batch`; the test loop feeds an ``AnomalyEvaluator`` built for
    the datamodule's categories and keeps the result in :attr:`test_results`.

    Checkpoints hold only trainable parameters: frozen CLIP weights are rebuilt from the backbone config,
    which is stored beside them and checked on load.
    """

    method_name: str = "?"

    def __init__(self, eval_cfg: EvalConfig | None = None) -> None:
        super().__init__()
        self.eval_cfg = eval_cfg or EvalConfig()
        # The method's protocol on the target under test (MethodSpec.dataset_protocol), which the runner
        # sets before each target; None: the method has one protocol (or nothing told it otherwise).
        self.method_protocol: dict[str, Any] | None = None
        # The few-shot references of the target under test (datamodules.references.ReferenceImages: K normal
        # training images per category, read with the method's preprocessing), which the runner sets before
        # each evaluation of a few-shot protocol; None: zero-shot. See :meth:`set_references`.
        self.references: Any = None
        # The run folder of the job this module runs in (the runner sets it), for files a method keeps with
        # its run (CMG's relevance cache); None outside a job.
        self.run_dir: Path | None = None
        self.evaluator = None
        self.test_results = None
        self.test_curves = None  # per category CurveSet of the last test epoch (F1 thresholds, pictures)
        self.strict_loading = False  # frozen weights are deliberately absent from checkpoints

    # --- evaluation -------------------------------------------------------------------------------
    def predict_batch(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(image scores [B], anomaly maps [B, H, W] at the mask size or None)``."""
        raise NotImplementedError

    def on_test_epoch_start(self) -> None:
        from lightning_modules.metrics import AnomalyEvaluator

        datamodule = self.trainer.datamodule
        test_index = datamodule.test_index
        counts = test_index.counts()
        self.evaluator = AnomalyEvaluator(
            categories=datamodule.categories,
            pixel_metrics=datamodule.full_index.has_masks,
            fpr_limit=self.eval_cfg.fpr_limit,
            pixel_score_dtype=self.eval_cfg.pixel_score_torch_dtype,
            samples_per_category=[sum(counts.get(c, {}).values()) for c in datamodule.categories],
            expected_samples=self._expected_test_samples(),
            # Real-IAD: the sample-level columns; MVTec LOCO, AutoVI: sPRO (docs/metrics.md)
            sample_metrics=any(r.group is not None for r in test_index.records),
            region_metrics=bool(test_index.region_rules),
            spro_fpr_limit=self.eval_cfg.spro_fpr_limit,
            image_score_rule=self.image_score_rule(),
            populations=datamodule.category_populations,  # the rule per object (MVTec LOCO's rows together)
            image_ids=test_index.image_ids(),
        ).to(self.device)
        self.load_references()

    # --- few-shot (MethodSpec.protocols has FEW_SHOT) -------------------------------------------------
    def load_references(self) -> None:
        """Hand each category's references to :meth:`set_references` before its test images (every
        process the same images, so a DDP evaluation equals one process), or forget them (zero-shot)."""
        self.clear_references()
        if self.references is None:
            return
        for category_id, category in enumerate(self.trainer.datamodule.categories):
            self.set_references(category_id, self.references.images(category).to(self.device))

    def set_references(self, category_id: int, images: torch.Tensor) -> None:
        """A few-shot method builds its memory of category ``category_id`` (an index into the datamodule's
        categories, as batches' ``category_id``) from ``images`` ``[K, 3, S, S]``, preprocessed like the
        test images; :meth:`predict_batch` then uses it for that category's images."""
        raise ZsadError(f"method '{self.method_name}' has no few-shot mode")

    def clear_references(self) -> None:
        """Forget every category's references (the next evaluation is zero-shot or another draw's)."""

    def image_score_rule(self) -> CategoryScoreRule | None:
        """A :class:`~lightning_modules.metrics.category_scores.CategoryScoreRule` when image scores depend
        on the whole category (VAND's k-shot normalisation, Bayes-PFL's min-max mix): ``predict_batch`` then
        returns their parts ``[B, parts]`` and the evaluator combines a category's parts once it is
        complete; None: per image."""
        return None

    def _expected_test_samples(self) -> list[frozenset[int]] | None:
        """Per category, the test samples this process's loader yields, so that a DDP evaluation scores
        and frees each category as it goes (docs/metrics.md); None in one process (the sizes suffice), when
        the loader's order is not known in advance, or when a batch limit cuts the epoch short."""
        from lightning_modules.metrics.distributed import expected_samples

        trainer = self.trainer
        loader = trainer.test_dataloaders
        if trainer.world_size == 1 or not isinstance(loader, DataLoader):
            return None
        if list(trainer.num_test_batches) != [len(loader)]:
            return None
        datamodule = trainer.datamodule
        ids = {c: i for i, c in enumerate(datamodule.categories)}
        return expected_samples(loader, [ids[r.category] for r in datamodule.test_index.records], len(ids))

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor | None]:
        """Feeds the evaluator; returns the batch's scores and maps for callbacks (e.g. the map writer);
        under an image-score rule also the parts (``image_score_parts``) and, as ``image_scores``, the
        rule's per-image score."""
        scores, maps = self.predict_batch(batch)
        outputs = self._outputs(scores, maps)
        self.evaluator.update(
            category_ids=batch["category_id"],
            sample_ids=batch["sample_id"],
            image_scores=scores.float(),
            labels=batch["label"],
            anomaly_maps=maps,
            masks=batch["mask"] if maps is not None else None,
            has_mask=batch["has_mask"],
            group_ids=batch.get("group_id"),
            regions=batch.get("regions"),
            region_saturation=batch.get("region_saturation"),
        )
        return outputs

    def _outputs(self, scores: torch.Tensor, maps: torch.Tensor | None) -> dict[str, torch.Tensor | None]:
        rule = self.evaluator.image_score_rule if self.evaluator is not None else self.image_score_rule()
        if rule is None:
            return {"image_scores": scores, "anomaly_maps": maps}
        return {"image_scores": rule.per_image(scores), "image_score_parts": scores, "anomaly_maps": maps}

    def on_test_epoch_end(self) -> None:
        self.test_results = self.evaluator.compute()
        self.test_curves = self.evaluator.curves()
        self.evaluator.reset()

    # --- prediction (`zsad predict`: images without ground truth) -----------------------------------
    def on_predict_epoch_start(self) -> None:
        """The same preparation as a test epoch (texts for the datamodule's categories, references, TTA)."""
        self.on_test_epoch_start()
        self.evaluator = None  # nothing to evaluate

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor | None]:
        return self._outputs(*self.predict_batch(batch))

    # --- checkpoints ------------------------------------------------------------------------------
    def trainable_state_keys(self) -> set[str]:
        return {name for name, p in self.named_parameters() if p.requires_grad}

    def checkpoint_identity(self) -> dict[str, Any]:
        """What must match between the module that saved a checkpoint and the one loading it (a method adds
        the config fields its trained weights depend on: :func:`config_fields`)."""
        return {"method": self.method_name}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep = self.trainable_state_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint["zsad"] = self.checkpoint_identity()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_checkpoint(self, checkpoint, source="checkpoint")

    def load_trained_weights(
        self, path: str, official_format: OfficialReader | None = None, checkpoint: Any = None
    ) -> None:
        """Load the trainable state of a checkpoint written by this module type (``zsad test``), or of the
        authors' released weights read by ``official_format`` (``MethodSpec.official_checkpoint``);
        ``checkpoint``: the file's content when the caller read it already (checked, never run)."""
        if checkpoint is None:
            checkpoint = read_checkpoint(path)
        if isinstance(checkpoint, dict) and "state_dict" not in checkpoint:
            if official_format is None:
                raise ZsadError(
                    f"{path} is not a zsad checkpoint (no 'state_dict'; keys: {sorted(checkpoint)[:5]}) and "
                    f"method '{self.method_name}' reads no other format"
                )
            checkpoint = {"state_dict": official_format(self, checkpoint, path)}
        check_checkpoint(self, checkpoint, source=path)
        self.load_state_dict(checkpoint["state_dict"], strict=False)


def config_fields(cfg: Any, names: tuple[str, ...]) -> dict[str, Any]:
    """``cfg``'s fields ``names`` as a checkpoint records them (sequences as lists)."""
    values = {name: getattr(cfg, name) for name in names}
    return {k: list(v) if isinstance(v, list | tuple) else v for k, v in values.items()}


def official_entries(checkpoint: dict[str, Any], key: str, source: str, what: str) -> dict[str, torch.Tensor]:
    """The state dict the authors saved under ``key``, or a :class:`ZsadError` saying the file is neither."""
    entries = checkpoint.get(key)
    if not isinstance(entries, dict):
        raise ZsadError(
            f"{source} is neither a zsad checkpoint (no 'state_dict') nor {what} (no '{key}'); "
            f"its keys: {sorted(checkpoint)[:5]}"
        )
    return entries


def checked_official_state(
    module: ZeroShotModule, tensors: dict[str, torch.Tensor], source: str, what: str
) -> dict[str, torch.Tensor]:
    """``tensors`` (zsad parameter name -> the authors' tensor, already reshaped) after checking that they
    are exactly the module's trainable state (:meth:`~ZeroShotModule.trainable_state_keys`: parameters, and
    buffers where a method keeps them, as BatchNorm statistics), each with its shape; ``what`` names the
    authors' format."""
    params = dict(module.named_parameters()) | dict(module.named_buffers())
    expected = module.trainable_state_keys()
    if set(tensors) != expected:
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise ZsadError(
            f"{source} ({what}) does not fit method '{module.method_name}' as configured: "
            f"missing {missing[:3]}, unexpected {extra[:3]}"
        )
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(params[name].shape):
            raise ZsadError(
                f"{source} ({what}): {name} has shape {tuple(tensor.shape)} but this model needs "
                f"{tuple(params[name].shape)}; check the method and backbone settings"
            )
    return tensors


def _differences(saved: Any, expected: Any, prefix: str = "") -> list[str]:
    """``key (saved X, now Y)`` for every dotted key whose value differs between two identities."""
    if isinstance(saved, dict) and isinstance(expected, dict):
        keys = list(expected) + [k for k in saved if k not in expected]
        return [d for k in keys for d in _differences(saved.get(k), expected.get(k), f"{prefix}{k}.")]
    return [] if saved == expected else [f"{prefix.rstrip('.')} (saved {saved!r}, now {expected!r})"]


def check_checkpoint(module: ZeroShotModule, checkpoint: dict[str, Any], source: str) -> None:
    saved = checkpoint.get("zsad")
    expected = module.checkpoint_identity()
    if isinstance(saved, dict) and saved.get("method") != expected.get("method"):
        raise ZsadError(
            f"{source} is a checkpoint of method '{saved.get('method')}', not of '{module.method_name}': "
            f"evaluate it with a config of method '{saved.get('method')}'"
        )
    if saved is not None and saved != expected:
        differences = _differences(saved, expected)
        raise ZsadError(
            f"{source} was trained with a different setup of '{module.method_name}': differs in "
            f"{'; '.join(differences[:4])}{' ...' if len(differences) > 4 else ''}; use the config it was trained with"
        )
    missing = module.trainable_state_keys() - set(checkpoint.get("state_dict", {}))
    if missing:
        raise ZsadError(
            f"{source} lacks trained parameters {sorted(missing)[:3]}... for method '{module.method_name}'"
        )
