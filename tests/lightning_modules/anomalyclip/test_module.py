"""AnomalyCLIP's LightningModule: training on synthetic data, seeds, and trimmed checkpoints."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from datamodules.config import DataConfig
from datamodules.datamodule import AnomalyDataModule
from datamodules.errors import ZsadError
from lightning_modules.anomalyclip import AnomalyCLIPModule
from lightning_modules.anomalyclip.model import AnomalyCLIP
from tests_support import quiet_trainer, tiny_anomalyclip_config


def _datamodule(root) -> AnomalyDataModule:
    return AnomalyDataModule(
        DataConfig(name="synthetic", root=str(root), batch_size=4, num_workers=0), image_size=32
    )


def _dataset_loss(module: AnomalyCLIPModule, datamodule: AnomalyDataModule) -> float:
    total, n = 0.0, 0
    with torch.no_grad():
        for batch in datamodule.train_dataloader():
            output = module.model(batch["image"], size=tuple(batch["mask"].shape[-2:]))
            total += module.model.loss(output, batch["label"], batch["mask"])["loss"].item() * len(
                batch["label"]
            )
            n += len(batch["label"])
    return total / n


def _fit(root, seed: int, epochs: int, tmp_path) -> AnomalyCLIPModule:
    L.seed_everything(seed, verbose=False)
    module = AnomalyCLIPModule(tiny_anomalyclip_config())
    trainer = quiet_trainer(max_epochs=epochs, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=_datamodule(root))
    return module


@pytest.mark.slow
def test_training_on_synthetic_data_lowers_the_loss(synthetic_pair, tmp_path):
    source, _ = synthetic_pair
    L.seed_everything(5, verbose=False)
    untrained = AnomalyCLIPModule(tiny_anomalyclip_config())
    trained = _fit(source, seed=5, epochs=6, tmp_path=tmp_path)
    datamodule = _datamodule(source)
    assert _dataset_loss(trained, datamodule) < _dataset_loss(untrained, datamodule)


@pytest.mark.slow
def test_same_seed_gives_the_same_prompts(synthetic_pair, tmp_path):
    source, _ = synthetic_pair
    a = _fit(source, seed=7, epochs=1, tmp_path=tmp_path)
    b = _fit(source, seed=7, epochs=1, tmp_path=tmp_path)
    c = _fit(source, seed=8, epochs=1, tmp_path=tmp_path)
    for (name, pa), (_, pb), (_, pc) in zip(
        a.model.prompts.named_parameters(),
        b.model.prompts.named_parameters(),
        c.model.prompts.named_parameters(),
        strict=True,
    ):
        torch.testing.assert_close(pa, pb, msg=name)
        assert not torch.equal(pa, pc)


def test_optimizer_holds_only_the_prompts():
    module = AnomalyCLIPModule(tiny_anomalyclip_config())
    optimizer = module.configure_optimizers()
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert in_optimizer == {id(p) for p in module.model.prompts.parameters()}
    assert optimizer.defaults["betas"] == (0.5, 0.999) and optimizer.defaults["lr"] == 1e-3


def test_checkpoint_from_another_setup_is_refused(tmp_path):
    module = AnomalyCLIPModule(tiny_anomalyclip_config())
    checkpoint = {"state_dict": dict(module.state_dict())}
    module.on_save_checkpoint(checkpoint)
    assert set(checkpoint["state_dict"]) == {
        f"model.{k}" for k, _ in module.model.prompts.named_parameters(prefix="prompts")
    }
    path = tmp_path / "prompts.ckpt"
    torch.save(checkpoint, path)

    other = AnomalyCLIPModule(tiny_anomalyclip_config(prompt_length=8))
    with pytest.raises(ZsadError, match="different setup"):
        other.load_trained_weights(str(path))
    same = AnomalyCLIPModule(tiny_anomalyclip_config())
    same.load_trained_weights(str(path))
    torch.testing.assert_close(same.model.prompts.normal_context, module.model.prompts.normal_context)
    with pytest.raises(ZsadError, match="checkpoint not found"):
        same.load_trained_weights(str(tmp_path / "missing.ckpt"))


def test_module_wraps_a_plain_torch_model():
    assert isinstance(AnomalyCLIPModule(tiny_anomalyclip_config()).model, AnomalyCLIP)
