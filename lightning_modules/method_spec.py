"""What a method is to zsad: one :class:`MethodSpec`, the whole contract between a method's package and the
rest (runner, CLI, predict, reports, the every-method test). docs/adding_a_method.md walks through it.

A spec is light: importing it and the method's config loads neither torch, Lightning nor open_clip, so
that ``zsad methods``, ``zsad config show`` and ``--help`` answer at once. Its builders and hooks import
the method's model and module inside their bodies, when a job needs them.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datamodules.augment import TrainAugmentation
    from datamodules.transforms import ImagePreprocessing
    from lightning_modules.base import ZeroShotModule
    from lightning_modules.eval_config import EvalConfig

#: The evaluation protocols a method may support (docs/protocols.md): zero-shot (no image of the target
#: dataset is seen before its test), few-shot (K normal training images of each target category are handed to
#: the module before that category's test images: ``ZeroShotModule.set_references``; ``protocol.shots`` /
#: ``protocol.draws``) and transductive (each test image scored against the other unlabeled test images of
#: its category, MuSc; still no training image). Zero-shot and transductive both run at ``protocol.shots=0``:
#: a method declares one of the two (:attr:`MethodSpec.protocol_without_references`).
ZERO_SHOT = "zero_shot"
FEW_SHOT = "few_shot"
TRANSDUCTIVE = "transductive"


@dataclasses.dataclass(frozen=True)
class CacheSettings:
    """Whether (and where) a method's frozen training features are encoded once and reused
    (lightning_modules/feature_cache.py)."""

    enabled: bool
    cache_dir: str | None = None  # also keep the table on disk there, for later runs
    max_gb: float | None = None  # in-memory limit per process (None: half of the available memory)


@dataclasses.dataclass(frozen=True)
class PublishedNumbers:
    """The numbers a paper reports for a method, shown as reference rows by ``zsad report --reference``."""

    source: str  # the paper and its tables
    results: Mapping[str, Mapping[str, float]]  # dataset -> metric (results.json's names) -> fraction
    # k-shot rows: shots -> dataset -> metric -> fraction (means over the papers' reference draws), and
    # where they come from (when not ``source``)
    few_shot: Mapping[int, Mapping[str, Mapping[str, float]]] = dataclasses.field(default_factory=dict)
    few_shot_source: str | None = None
    # dataset -> the training source its numbers were measured after, as results.json's ``source`` names it
    # ("visa", "mvtec+colondb"), or None where the source does not say; None: a training-free method
    trained_on: Callable[[str], str | None] | None = None
    # dataset -> the training epochs of the paper's run (``trainer.max_epochs``), or None where not stated
    epochs: Callable[[str], int | None] | None = None

    def numbers(self, shots: int = 0) -> Mapping[str, Mapping[str, float]]:
        """dataset -> metric -> fraction of the zero-shot rows (``shots=0``) or of the ``shots``-shot rows."""
        return self.results if shots == 0 else self.few_shot.get(shots, {})

    def source_of(self, shots: int = 0) -> str:
        return self.source if shots == 0 else (self.few_shot_source or self.source)

    def measured_after(self, dataset: str, source: str | None, epochs: int | None = None) -> bool:
        """Whether a run trained on ``source`` (results.json's ``source``) for ``epochs`` (None: unknown) was
        trained as the numbers of ``dataset`` were: the paper's MVTec AD numbers, trained on VisA, are no
        reference for a run trained on MVTec AD itself, nor for one trained for 1 epoch instead of 15. True
        where the method trains on nothing or the paper does not say."""
        expected = self.trained_on(dataset) if self.trained_on is not None else None
        if expected is not None and set(str(source or "").split("+")) != set(expected.split("+")):
            return False
        paper_epochs = self.epochs(dataset) if self.epochs is not None else None
        return paper_epochs is None or epochs is None or int(epochs) == paper_epochs


def visa_for_mvtec(dataset: str) -> str:
    """The usual zero-shot training direction (AnomalyCLIP's paper and the methods after it): VisA for MVTec
    AD, MVTec AD for every other dataset."""
    return "visa" if dataset == "mvtec" else "mvtec"


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": [1, {"c": 2}]}}`` -> ``{"a.b.0": 1, "a.b.1.c": 2}``; empty containers stay values (the
    dotted keys of reports, sweeps and ``published_for``)."""
    if isinstance(node, dict) and node:
        items: Any = node.items()
    elif isinstance(node, list) and node and any(isinstance(v, dict | list) for v in node):
        items = enumerate(node)
    else:
        return {prefix.rstrip("."): node}
    out: dict[str, Any] = {}
    for key, value in items:
        out.update(flatten(value, f"{prefix}{key}."))
    return out


def with_defaults(settings: Mapping[str, Any], config_class: type) -> dict[str, Any]:
    """A run's flattened method settings (``published_for``'s argument) completed by the config's defaults:
    an absent key has its default (runs without config.yaml record only the method's name)."""
    return {**flatten(dataclasses.asdict(config_class())), **settings}


def is_released_file(weights: Any, tag: str, released: str) -> bool:
    """Whether ``backbone.pretrained``-like ``weights`` are the published weights: their tag, or a path to the
    file of the released name (which weights a file of another name holds is unknown)."""
    return weights == tag or (isinstance(weights, str) and PurePath(weights).name == released)


#: Cache keys of a method config (its feature cache, ``backbone.cache_dir``): they change no number, and
#: ``published_at_defaults`` never reads them.
CACHE_KEYS = ("cache_features", "cache_dir", "cache_max_gb")
#: OpenAI's released ViT-L/14@336px file, as ``backbone.pretrained=/path/FILE`` names it instead of "openai".
OPENAI_VIT_L14_336 = {"backbone.pretrained": "ViT-L-14-336px.pt"}
#: open_clip's released LAION-400M ViT-B-16-plus-240 file (WinCLIP's weights)
LAION400M_VIT_B16_PLUS_240 = {"backbone.pretrained": "vit_b_16_plus_240-laion400m_e31-8fb26589.pt"}


def published_at_defaults(
    numbers: PublishedNumbers,
    config_class: type,
    ignore: tuple[str, ...] = (),
    files: Mapping[str, str] | None = None,
    also: Mapping[str, tuple[Any, ...]] | None = None,
) -> Callable[[Mapping[str, Any]], PublishedNumbers | None]:
    """A ``published_for``: ``numbers`` beside a run whose method settings are the config's defaults (the
    authors' code), none beside any other. ``ignore``: keys that do not change results (cache keys never
    count); ``files``:
    key -> the released file that a path given there may name instead of the default tag; ``also``: key ->
    the other values the authors' scripts set for some training direction (the experiments' overrides)."""
    defaults = flatten(dataclasses.asdict(config_class()))
    released = dict(files or {})
    alternatives = dict(also or {})

    def same(key: str, value: Any) -> bool:
        if value in alternatives.get(key, ()):
            return True
        return (
            is_released_file(value, defaults[key], released[key])
            if key in released
            else value == defaults[key]
        )

    def read(key: str) -> bool:
        return key in defaults and key not in ignore and key.rsplit(".", 1)[-1] not in CACHE_KEYS

    def published_for(settings: Mapping[str, Any]) -> PublishedNumbers | None:
        changed = [k for k, v in settings.items() if read(k) and not same(k, v)]
        return None if changed else numbers

    return published_for


@dataclasses.dataclass(frozen=True)
class MeasuredAt:
    """Where a method's ``published`` numbers were measured: its config's defaults (the authors' code), and
    (:func:`published_at_defaults`) ``files``: key -> the released file a path there may name instead of the
    default tag; ``also``: key -> the other values the authors' scripts set for some training direction;
    ``ignore``: keys that change no number (cache keys never count)."""

    files: Mapping[str, str] = dataclasses.field(default_factory=dict)
    also: Mapping[str, tuple[Any, ...]] = dataclasses.field(default_factory=dict)
    ignore: tuple[str, ...] = ()


def cache_settings(cfg: Any) -> CacheSettings:
    """The config's ``cache_features``, ``cache_dir`` and ``cache_max_gb`` (AnomalyCLIP, VAND, CoOp)."""
    return CacheSettings(bool(cfg.cache_features), cfg.cache_dir, cfg.cache_max_gb)


def backbone_image_size(cfg: Any) -> int:
    """The model's input size: ``backbone.image_size`` of the method's config."""
    return int(cfg.backbone.image_size)


def official_preprocessing(cfg: Any, dataset: str | None) -> ImagePreprocessing:
    """AnomalyCLIP's resize (bicubic PIL, bilinear mask; docs/datasets.md), the default of every method."""
    from datamodules.transforms import ImagePreprocessing

    return ImagePreprocessing()


@dataclasses.dataclass(frozen=True, kw_only=True)
class MethodSpec:
    """Everything zsad needs to know about one method; registered in :mod:`lightning_modules.registry`.

    Hooks take the method's config (``cfg``, an instance of ``config_class``) and, where it matters, the
    dataset (a name of ``zsad data list``; None for images of no benchmark, as ``zsad predict`` gets).
    """

    # --- what it is -------------------------------------------------------------------------------
    name: str  # ``method=NAME`` picks configs/method/NAME.yaml, whose ``name`` is this
    config_class: type  # the typed config dataclass (its defaults are the authors' code)
    description: str = ""  # one line for ``zsad methods``
    tiny_config: str  # configs/method/{tiny_config}.yaml: the tiny random-weight CLIP, for tests and demos
    # --- building ---------------------------------------------------------------------------------
    build_module: Callable[[Any, EvalConfig], ZeroShotModule]  # (cfg, eval config) -> LightningModule
    # --- training ---------------------------------------------------------------------------------
    trains: bool  # False: training-free (``zsad run`` skips fitting, ``zsad train`` refuses)
    needs: str  # what it trains on, for ``zsad methods`` (e.g. "image labels; pixel masks optional")
    # Frozen features encoded once and reused every epoch (cfg -> settings); None: the method has none.
    # Its module then implements lightning_modules.feature_cache.FeatureCacheSource.
    feature_cache: Callable[[Any], CacheSettings] | None = None
    # --- data -------------------------------------------------------------------------------------
    image_size: Callable[[Any], int] = backbone_image_size  # cfg -> input size of the model
    # (cfg, dataset) -> how the authors' code resizes images and masks there (AnoVL: per dataset)
    preprocessing: Callable[[Any, str | None], ImagePreprocessing] = official_preprocessing
    # (cfg, dataset) -> the method's protocol there, recorded in results.json as ``method_protocol``; raises
    # ConfigError for one it does not implement. None: one protocol everywhere, nothing recorded.
    dataset_protocol: Callable[[Any, str], dict[str, Any]] | None = None
    # (cfg, dataset) -> the training augmentation of the authors' dataset class when training on that dataset
    # (datamodules/augment.py), which the runner hands to the source's datamodule: it draws per (seed, epoch,
    # sample), so a resume and a DDP training stay exact. None (the field or the answer): the training
    # images as they are. With one, the feature cache steps aside (the images change every epoch).
    train_augmentation: Callable[[Any, str], TrainAugmentation | None] | None = None
    # --- evaluation -------------------------------------------------------------------------------
    # The evaluation protocols it supports; with FEW_SHOT its module implements set_references (and
    # clear_references), which the runner's few-shot evaluation feeds (docs/adding_a_method.md); with
    # TRANSDUCTIVE its module sees each category's test images all at once (MuSc: musc/module.py).
    protocols: tuple[str, ...] = (ZERO_SHOT,)
    # cfg -> whether the test loop needs autograd (test-time adaptation): the Trainer then runs without
    # inference mode. None: never.
    grad_at_test: Callable[[Any], bool] | None = None
    # cfg -> why an evaluation over several processes would differ from one process (refused then), or
    # None when a DDP evaluation equals a single-process one. None: always exact.
    ddp_refusal: Callable[[Any], str | None] | None = None
    # --- weights and numbers ----------------------------------------------------------------------
    # (module, checkpoint dict, file) -> the module's trainable state from a checkpoint in the authors'
    # format (their released weights); None: only zsad checkpoints load.
    official_checkpoint: Callable[[Any, dict[str, Any], str], dict[str, Any]] | None = None
    published: PublishedNumbers | None = None  # the paper's numbers, for ``zsad report --reference``
    # Where ``published`` was measured: the config's defaults and what MeasuredAt adds; the numbers stand
    # beside runs of that setting only. None (and no ``published_for``): beside every setting of the method.
    published_at: MeasuredAt | None = None
    # For a source that reports several settings, instead of ``published_at``: a run's method settings (its
    # config.yaml's ``method`` keys, flattened and dotted: ``backbone.name``, ``feature_layers``; an absent
    # key has its default) -> the published numbers measured in that setting, or None where no source
    # states any. MuSc: its README's backbone study gives each backbone and input size its own numbers.
    published_for: Callable[[Mapping[str, Any]], PublishedNumbers | None] | None = None

    def __post_init__(self) -> None:
        if self.published_at is not None and (self.published is None or self.published_for is not None):
            raise ValueError(f"method '{self.name}': published_at needs published and excludes published_for")

    @functools.cached_property
    def _published_at_defaults(self) -> Callable[[Mapping[str, Any]], PublishedNumbers | None] | None:
        if self.published_at is None:
            return None
        at = self.published_at
        return published_at_defaults(self.published, self.config_class, at.ignore, at.files, at.also)

    def published_numbers(self, settings: Mapping[str, Any]) -> PublishedNumbers | None:
        """The published numbers beside a run of these method ``settings`` (``published_at`` /
        ``published_for``; else ``published``)."""
        if self.published_for is not None:
            return self.published_for(settings)
        if self._published_at_defaults is not None:
            return self._published_at_defaults(settings)
        return self.published

    @property
    def few_shot(self) -> bool:
        return FEW_SHOT in self.protocols

    @property
    def runs_without_references(self) -> bool:
        """Whether it evaluates at ``protocol.shots=0`` (zero-shot or transductive); AnomalyDINO does not."""
        return ZERO_SHOT in self.protocols or TRANSDUCTIVE in self.protocols

    @property
    def protocol_without_references(self) -> str:
        """What ``protocol.shots=0`` means for it: TRANSDUCTIVE where it declares that, else ZERO_SHOT."""
        return TRANSDUCTIVE if TRANSDUCTIVE in self.protocols else ZERO_SHOT

    def protocol_on(self, cfg: Any, dataset: str) -> dict[str, Any] | None:
        """The protocol record of ``dataset`` (None: the method declares none); raises ConfigError."""
        return self.dataset_protocol(cfg, dataset) if self.dataset_protocol is not None else None

    def augmentation_on(self, cfg: Any, dataset: str) -> TrainAugmentation | None:
        """The training augmentation when training on ``dataset`` (None: none)."""
        return self.train_augmentation(cfg, dataset) if self.train_augmentation is not None else None

    def needs_grad_at_test(self, cfg: Any) -> bool:
        return bool(self.grad_at_test(cfg)) if self.grad_at_test is not None else False

    def ddp_refusal_reason(self, cfg: Any) -> str | None:
        return self.ddp_refusal(cfg) if self.ddp_refusal is not None else None
