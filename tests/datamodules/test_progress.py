"""Progress bars: whole lines when the output is not a terminal (SLURM logs), final state always shown."""

from __future__ import annotations

import io

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from datamodules.progress import LightningLineBar, lightning_progress_bar, progress
from tests_support import quiet_trainer


def test_a_log_gets_whole_lines_and_always_the_final_state(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    log = io.StringIO()  # not a terminal
    assert list(progress(range(5), "encoding", file=log, line_interval=float("inf"))) == list(range(5))
    assert "\r" not in log.getvalue()
    (line,) = log.getvalue().splitlines()
    assert line.startswith("encoding: 100%") and "5/5" in line

    every = io.StringIO()
    list(progress(range(5), "encoding", file=every, line_interval=0))
    lines = every.getvalue().splitlines()
    assert [line.split("|")[-1].split()[0] for line in lines] == ["1/5", "2/5", "3/5", "4/5", "5/5"]

    monkeypatch.setenv("RANK", "1")  # DDP: only global rank 0 shows progress
    quiet = io.StringIO()
    assert list(progress(range(3), "encoding", file=quiet)) == [0, 1, 2]
    assert quiet.getvalue() == ""


class _Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch[0]).pow(2).mean()
        self.log("loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_bars_print_one_line_per_epoch_into_a_log(capsys):
    assert isinstance(lightning_progress_bar(), LightningLineBar)  # pytest's captured stdout is no terminal
    trainer = quiet_trainer(max_epochs=3, enable_progress_bar=True, callbacks=[LightningLineBar()])
    loader = DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=2)
    trainer.fit(_Tiny(), loader)
    out = capsys.readouterr().out
    assert "\r" not in out
    epochs = [line for line in out.splitlines() if line.startswith("Epoch")]
    assert [line.split(":")[0] for line in epochs] == ["Epoch 0", "Epoch 1", "Epoch 2"]
    assert all("4/4" in line and "loss=" in line for line in epochs)
