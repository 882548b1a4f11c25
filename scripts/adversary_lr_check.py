#!/usr/bin/env python
"""How fast a fresh speaker classifier (atfnn.training.SpeakerAdversary) learns the training speakers of one fold.

    .venv/bin/python scripts/adversary_lr_check.py runs/casia-atfnn-spknorm-reg ZhaoZuoxiang

Encodes the fold's *training* speakers' segments with the fold's saved model (h', fixed), then trains the classifier
alone on them for six epochs (batch 128, AdamW with weight decay 0.01, no gradient reversal) at the network's learning
rate 5e-4 and at 0.01, printing the mean speaker loss per epoch (ln 3 = 1.10 is chance for three speakers). This is
how configs/casia_atfnn_spknorm_reg_adv_lr.yaml chose train.adversary_lr; it never sees the test speaker.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from atfnn.checkpoint import load_model
from atfnn.experiment import load_run_config, prepare_corpus, split_data
from atfnn.foldsets import read_run_folds as read_folds  # either run layout
from atfnn.training import SpeakerAdversary

EPOCHS, BATCH, LEARNING_RATES = 6, 128, (5e-4, 1e-2)


def main(run: Path, fold_name: str, seed: int = 0) -> None:
    torch.manual_seed(0)
    corpus = prepare_corpus(load_run_config(run), progress=False, log=lambda message: None)
    data = split_data(corpus, {f.name: f for f in read_folds(run)}[fold_name].train)
    model, _ = load_model(run / f"seed-{seed}" / fold_name / "model", torch.device("cpu"))
    model.eval()
    with torch.inference_mode():
        h = torch.cat([model.embed(data.x[i : i + 256])[0] for i in range(0, len(data), 256)]).clone()
    for lr in LEARNING_RATES:
        adversary = SpeakerAdversary(h.shape[1], int(data.spk.max()) + 1)
        optimizer = torch.optim.AdamW(adversary.parameters(), lr=lr, weight_decay=0.01)
        generator, losses = torch.Generator().manual_seed(0), []
        for _ in range(EPOCHS):
            order, total = torch.randperm(len(h), generator=generator), 0.0
            for i in range(0, len(h), BATCH):
                idx = order[i : i + BATCH]
                loss = F.cross_entropy(adversary(h[idx], 0.0), data.spk[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += loss.item() * len(idx)
            losses.append(round(total / len(h), 3))
        print(f"lr {lr}: speaker loss per epoch {losses}", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
