"""VCP-CLIP speed: zsad against the authors' test loop and training step, same tiny CLIP, same files, same CPU.

    python benchmarks/speed_vcp_clip.py --official /tmp/VCP-CLIP --official-env /tmp/vcp-env [--repeats 3]

Both sides run on the parity CLIP of benchmarks/parity_vcp_clip.py (12 vision blocks, 240 px) over its
12 generated images, in float32 on the CPU, one thread each (``torch.set_num_threads(1)``):

- **test loop**: their ``test.test(args)`` with test.sh's arguments and ``calcuate_metric`` replaced by a
  no-op (so: their dataset, loader at batch 32, encoder, texts per image, both map kinds per layer, their
  layer means in NumPy), against zsad's test loader at batch 32 and the same scope (``VCPCLIP.forward``, the
  two mean maps); zsad's full ``predict_batch`` (plus the Gaussian smoothing and top-k scores, which their
  loop leaves to ``calcuate_metric``) is timed too;
- **training step**: their train.py loop body on one batch of the 12 images (frozen encoder, texts, maps,
  focal + Dice, backward, Adam step) against zsad's (``encode_images``, ``scores``, ``loss``, backward,
  Adam step).

Each is timed ``--repeats`` times, the best kept; the last line is one JSON object with the ratios
(their time / zsad's).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import parity_support as ps  # noqa: E402
import parity_vcp_clip as pvc  # noqa: E402
import torch  # noqa: E402
from perf_support import fastest  # noqa: E402


def official_times(official: Path, root: Path, weights: Path, repeats: int) -> dict[str, float]:
    torch.set_num_threads(1)
    setup = pvc.official_setup(official, root, weights)
    from models.model_CLIP import tokenize
    from models.prompt_ensemble import Prompt_Ensemble

    setup.their_test.calcuate_metric = lambda *args, **kwargs: None
    test_loop = fastest(lambda: setup.their_test.test(setup.args), repeats)

    model = setup.model
    model.train()
    model_optim = setup.their_train._freeze_stages(model, "prompt")
    for part in (setup.trainable_layer, setup.new_lan_embed, setup.zero_try):
        part.train()
    optimizer = pvc.official_optimizer(setup, model, model_optim)
    maker = setup.their_dataset.Makedataset(
        train_data_path=str(setup.data_root),
        preprocess_test=setup.preprocess_test,
        mode="test",
        train_mode="zero",
        image_size=pvc.IMAGE_SIZE,
        aug=-1,
    )
    loader, _ = maker.mask_dataset(name="mvtec", product_list=list(ps.CATEGORIES), batchsize=12, shuf=False)
    items = next(iter(loader))
    prompt_pre = Prompt_Ensemble(pvc.PROMPT_LEN, tokenize)

    def step() -> None:
        with torch.no_grad():
            image_features, patch_tokens = model.encode_image(items["img"], pvc.FEATURE_LAYERS)
        pvc.official_step(setup, model, optimizer, prompt_pre, patch_tokens, image_features, dict(items))
        optimizer.step()

    return {"test_loop_s": test_loop, "train_step_s": fastest(step, repeats)}


def zsad_times(root: Path, repeats: int) -> dict[str, float]:
    import open_clip

    from datamodules import AnomalyDataModule, DataConfig
    from lightning_modules.registry import get_method
    from lightning_modules.vcp_clip import VCPCLIP, VCPCLIPModule

    torch.set_num_threads(1)
    pvc.register_model()
    clip = open_clip.create_model(pvc.MODEL, pretrained=None)
    clip.load_state_dict(pvc.state_dict())
    cfg = pvc.zsad_config()
    model = VCPCLIP(cfg, clip, open_clip.get_tokenizer(pvc.MODEL))
    module = VCPCLIPModule(cfg, model=model)
    data = AnomalyDataModule(
        DataConfig(name="synthetic", root=str(root), num_workers=0, eval_batch_size=32, batch_size=12),
        pvc.IMAGE_SIZE,
        get_method("vcp_clip").preprocessing(cfg, "synthetic"),
    )

    def test_loop(full: bool) -> None:
        module.eval()
        with torch.no_grad():
            for batch in data.test_dataloader():
                if full:
                    module.predict_batch(batch)
                else:
                    output = model(batch["image"], tuple(batch["mask"].shape[-2:]))
                    output.pre_map(), output.post_map()

    timed_test = fastest(lambda: test_loop(False), repeats)
    timed_predict = fastest(lambda: test_loop(True), repeats)
    batch = next(iter(data.test_dataloader()))
    module.train()
    optimizer = module.configure_optimizers()

    def step() -> None:
        features = model.encode_images(batch["image"])
        loss = model.loss(model.scores(features, (pvc.IMAGE_SIZE, pvc.IMAGE_SIZE)), batch["mask"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return {"test_loop_s": timed_test, "predict_s": timed_predict, "train_step_s": fastest(step, repeats)}


def main() -> None:
    args = ps.parity_arguments(
        __doc__, "checkout of xiaozhen228/VCP-CLIP", "PYTHONPATH entries the official side needs"
    )
    repeats = 3
    if args.official_side:
        times = official_times(args.official.resolve(), args.root, args.weights, repeats)
        ps.save_fixture(args.official_side, **times)
        return
    work = Path(tempfile.mkdtemp(prefix="zsad-speed-vcp-clip-"))
    root = ps.write_parity_images(work / "mvtec")
    ours = zsad_times(root, repeats)
    theirs = {
        k: float(v)
        for k, v in ps.run_official_side(
            __file__, args.official, root, pvc.state_dict(), work, (args.official_env,)
        ).items()
    }
    print(
        f"VCP-CLIP speed, 12 images of the parity CLIP at {pvc.IMAGE_SIZE} px, CPU, one thread, best of {repeats}"
    )
    ratios = {}
    for name, label in (
        ("test_loop_s", "test loop (batch 32)"),
        ("train_step_s", "training step (batch 12)"),
    ):
        ratios[name.removesuffix("_s")] = theirs[name] / ours[name]
        print(
            f"  {label:<26} authors {theirs[name]:.3f} s, zsad {ours[name]:.3f} s: {ratios[name.removesuffix('_s')]:.2f}x"
        )
    print(f"  zsad's predict_batch with smoothing and top-k scores: {ours['predict_s']:.3f} s")
    print(json.dumps({"method": "vcp_clip", "authors_s": theirs, "zsad_s": ours, "speedup": ratios}))


if __name__ == "__main__":
    main()
