"""AA-CLIP speed: zsad against the authors' train.py loops and test.py path, same tiny CLIP, same files, CPU.

    python benchmarks/speed_aa_clip.py --official /tmp/AA-CLIP --official-env /tmp/aaclip-env

Both sides run on the parity CLIP of benchmarks/parity_aa_clip.py (8 vision blocks, 4 text blocks, 288 px)
over its 12 generated images, in float32 on the CPU, one thread each (``torch.set_num_threads(1)``), each
side in its own process, from the same initial adapters:

- **training**: one epoch of each stage on the 12 images, both sides on the same fixed batches without
  augmentation (the models and loops are timed, not the loaders): their ``train_text_adapter`` at batch 4 with the "surgery" CLIP ``train.py main`` builds (a
  second CLIP whose last blocks run V-V attention; its construction is timed), then their
  ``train_image_adapter`` at batch 2 with its MultiStepLR; zsad's ``text_stage_loss`` / ``image_stage_loss``
  on the same batches with the same optimisers (its surgery blocks share the frozen CLIP's weights);
- **test**: their ``get_adapted_text_embedding``, then per class ``BaseSingleClassDataset``,
  ``get_predictions`` (batch 32, as test.py) and ``metrics_eval`` (sklearn AUROC / AP); zsad's datamodule
  (batch 32), ``AAClipModule.predict_batch`` and its evaluator (AUROC, AP, F1-max, the exact and the
  200-threshold AUPRO, the per-category image-score rule).

The two sides alternate for ``ZSAD_SPEED_ROUNDS`` rounds (default 2), each timing everything ``REPEATS``
times; each side's fastest time counts (a shared machine's load varies). The last line is one JSON object
with the ratios (their time / zsad's).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parent))

import parity_aa_clip as pa  # noqa: E402
import parity_support as ps  # noqa: E402
import torch  # noqa: E402
from perf_support import alternating_fastest, fastest, print_speedups, speed_rounds  # noqa: E402

REPEATS = 3
TEXT_BATCH, IMAGE_BATCH, TEST_BATCH = 4, 2, 32


def official_times(official: Path, root: Path, weights: Path) -> dict[str, float]:
    import logging

    torch.set_num_threads(1)
    side = pa.their_side(official, root, weights)
    items = [side.dataset(c)[i] for c in side.categories for i in range(len(side.dataset(c)))]
    collate = torch.utils.data.default_collate
    text_batches = [collate(items[i : i + TEXT_BATCH]) for i in range(0, len(items), TEXT_BATCH)]
    image_batches = [collate(items[i : i + IMAGE_BATCH]) for i in range(0, len(items), IMAGE_BATCH)]
    initial = {k: v.clone() for k, v in side.adapted.state_dict().items()}
    logger, save = logging.getLogger("aa_clip_speed"), tempfile.mkdtemp(prefix="zsad-aa-clip-speed-")
    forward_utils, adapted = side.forward_utils, side.adapted

    def train() -> None:
        adapted.load_state_dict(initial)
        surgery = side.create_model(model_name=pa.MODEL, img_size=pa.IMAGE_SIZE, device="cpu").eval()
        surgery.visual.DAPM_replace(DPAM_layer=pa.SURGERY_UNTIL_LAYER)
        text = torch.optim.Adam(adapted.text_adapter.parameters(), lr=1e-5, betas=(0.5, 0.999))
        side.train.train_text_adapter(
            adapted, surgery, 0.1, text_batches, text, "cpu", 0, save, 1, pa.DATASET, pa.IMAGE_SIZE, logger
        )
        with torch.no_grad():
            anchors = forward_utils.get_adapted_text_embedding(adapted, pa.DATASET, "cpu")
        image = torch.optim.Adam(adapted.image_adapter.parameters(), lr=5e-4, betas=(0.5, 0.999))
        scheduler = torch.optim.lr_scheduler.MultiStepLR(image, milestones=[16000, 32000], gamma=0.5)
        side.train.train_image_adapter(
            adapted, anchors, image_batches, image, scheduler, "cpu", 0, save, 1, pa.IMAGE_SIZE, logger
        )

    def test() -> None:
        with torch.no_grad():
            anchors = forward_utils.get_adapted_text_embedding(adapted, pa.DATASET, "cpu")
        for category in side.categories:
            loader = torch.utils.data.DataLoader(side.dataset(category), batch_size=TEST_BATCH, shuffle=False)
            with torch.no_grad():
                masks, labels, preds, preds_image, _ = side.test.get_predictions(
                    adapted, anchors[category], loader, "cpu", pa.IMAGE_SIZE, pa.DATASET
                )
            forward_utils.metrics_eval(masks, labels, preds, preds_image, category, "Industrial")

    timed_train = fastest(train, REPEATS)
    adapted.load_state_dict(initial)
    return {"train_s": timed_train, "test_s": fastest(test, REPEATS)}


def zsad_times(root: Path, initial: dict[str, torch.Tensor]) -> dict[str, float]:
    from datamodules import AnomalyDataModule, DataConfig
    from lightning_modules.aa_clip.module import AAClipModule
    from lightning_modules.metrics import AnomalyEvaluator

    torch.set_num_threads(1)
    data = AnomalyDataModule(
        DataConfig(name="synthetic", root=str(root), num_workers=0, eval_batch_size=TEST_BATCH),
        pa.IMAGE_SIZE,
        pa.preprocessing(),
    )
    categories = list(data.categories)
    batches = list(data.test_dataloader())
    images = torch.cat([b["image"] for b in batches])
    masks, labels = torch.cat([b["mask"] for b in batches]), torch.cat([b["label"] for b in batches])
    ids = torch.cat([b["category_id"] for b in batches])
    module = AAClipModule(pa.zsad_config(), model=pa.zsad_model(initial))
    model = module.model
    model.set_classes(categories)
    module.category_medical = torch.zeros(len(categories), dtype=torch.bool)

    def train() -> None:
        model.adapters.load_state_dict(initial)
        model.class_text = None
        (text, image), (scheduler,) = module.configure_optimizers()
        for start in range(0, len(ids), TEXT_BATCH):
            chunk = slice(start, start + TEXT_BATCH)
            loss = model.text_stage_loss(images[chunk], masks[chunk], ids[chunk])["loss"]
            text.zero_grad()
            loss.backward()
            text.step()
        with torch.no_grad():
            model.freeze_texts()
        for start in range(0, len(ids), IMAGE_BATCH):
            chunk = slice(start, start + IMAGE_BATCH)
            loss = model.image_stage_loss(images[chunk], masks[chunk], labels[chunk], ids[chunk])["loss"]
            image.zero_grad()
            loss.backward()
            image.step()
            scheduler.step()

    def test() -> None:
        with torch.no_grad():
            model.class_text = None
            model.freeze_texts()
            evaluator = AnomalyEvaluator(categories=categories, image_score_rule=module.image_score_rule())
            ps.predict_into(evaluator, module, data.test_dataloader())
            evaluator.compute()

    timed_train = fastest(train, REPEATS)
    model.adapters.load_state_dict(initial)
    return {"train_s": timed_train, "test_s": fastest(test, REPEATS)}


def main() -> None:
    args = ps.parity_arguments(
        __doc__, "checkout of Mwxinnn/AA-CLIP", "PYTHONPATH entries the official side needs"
    )
    if ps.serve_official_side(args, official_times):
        return
    work = Path(tempfile.mkdtemp(prefix="zsad-speed-aa-clip-"))
    root = ps.write_parity_images(work / "mvtec")
    pythonpath = tuple(p for p in (str(args.official.resolve()), args.official_env) if p)
    initial = pa.initial_state(ps.load_fixture(pa.FIXTURE))  # their AdaptedCLIP's, seed ADAPTERS_SEED
    rounds = speed_rounds()
    theirs, ours = alternating_fastest(
        lambda: ps.run_official_side(__file__, args.official, root, pa.state_dict(), work, pythonpath),
        lambda: zsad_times(root, initial),
        rounds,
    )
    print(
        f"AA-CLIP speed, 12 images of the parity CLIP at {pa.IMAGE_SIZE} px, CPU, one thread, best of "
        f"{REPEATS} x {rounds} alternating rounds"
    )
    rows = (
        ("train_s", f"training (an epoch per stage, batch {TEXT_BATCH} / {IMAGE_BATCH})"),
        ("test_s", "test (12 images)"),
    )
    print_speedups("aa_clip", rows, theirs, ours)


if __name__ == "__main__":
    main()
