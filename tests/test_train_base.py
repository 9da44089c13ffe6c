"""Base-model training: the winner-part shortcut, a step that learns, resumable runs, the exported card."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from models.canonical import canonicalize
from models.data.labels import LabelConfig, sample_labelled
from models.occupancy import OccupancyDecoder, load_decoder
from models.train.base import TrainConfig, learning_rate, train, training_step

TINY_LABELS = LabelConfig(uniform_points=64, surface_points=192)


def test_winner_part_logits_match_the_fused_forward_and_its_gradients(rigged_hand):
    torch.manual_seed(0)
    decoder = OccupancyDecoder()
    batch = sample_labelled(rigged_hand, 3, np.random.default_rng(0), label_config=TINY_LABELS)
    canonical = canonicalize(batch.keypoints)
    gradients = []
    for shortcut in (False, True):
        decoder.zero_grad()
        if shortcut:
            code = decoder.hand_code(canonical.part_matrices, canonical.bone_lengths)
            logits = decoder.max_part_logits(batch.points, code)
        else:
            logits = decoder(batch.points, canonical.part_matrices, canonical.bone_lengths)
        F.binary_cross_entropy_with_logits(logits, batch.occupancy).backward()
        gradients.append((logits.detach(), [p.grad.clone() for p in decoder.parameters()]))
    (full_logits, full_grads), (short_logits, short_grads) = gradients
    torch.testing.assert_close(short_logits, full_logits, atol=1e-5, rtol=1e-5)
    for full, short in zip(full_grads, short_grads, strict=True):
        torch.testing.assert_close(short, full, atol=1e-6, rtol=1e-4)


def test_chosen_part_logits_pick_each_points_part(rigged_hand):
    torch.manual_seed(1)
    decoder = OccupancyDecoder()
    batch = sample_labelled(rigged_hand, 2, np.random.default_rng(2), label_config=TINY_LABELS)
    assert batch.parts.shape == batch.occupancy.shape and len(batch.parts.unique()) > 8
    canonical = canonicalize(batch.keypoints)
    code = decoder.hand_code(canonical.part_matrices, canonical.bone_lengths)
    every_part = decoder.part_logits(batch.points, code)  # (P,B,N)
    expected = every_part.gather(0, batch.parts[None])[0]
    torch.testing.assert_close(
        decoder.chosen_part_logits(batch.points, code, batch.parts), expected, atol=1e-5, rtol=1e-5
    )


def test_training_steps_reduce_the_loss_on_a_tiny_batch(rigged_hand):
    torch.manual_seed(0)
    decoder = OccupancyDecoder()
    optimizer = torch.optim.Adam(decoder.parameters(), lr=3e-3)
    batch = sample_labelled(rigged_hand, 2, np.random.default_rng(1), label_config=TINY_LABELS)
    losses = [training_step(decoder, optimizer, batch) for _ in range(120)]
    assert losses[-1] < 0.7 * losses[0]


def test_learning_rate_anneals_over_the_budget():
    config = TrainConfig(learning_rate=1e-3, final_learning_rate=1e-5, time_budget_s=100.0, max_steps=0)
    assert learning_rate(config, 0, 0.0) == 1e-3
    assert 1e-5 < learning_rate(config, 10, 50.0) < 1e-3
    assert learning_rate(config, 20, 100.0) == 1e-5
    assert learning_rate(replace(config, max_steps=10), 10, 1.0) == 1e-5  # the step budget ends it too


def test_a_run_resumes_and_exports_a_loadable_checkpoint_with_its_card(rigged_hand, tmp_path):
    config = TrainConfig(
        hands_per_step=2, labels=TINY_LABELS, max_steps=2, time_budget_s=600.0, val_hands=2, val_every=1
    )
    output = tmp_path / "base.safetensors"
    first = train(
        config, rigged_hand, tmp_path / "run", output, command="halo train base --max-steps=2", progress=False
    )
    assert first.step == 2 and len(first.losses) == 2 and first.val_steps == [1, 2]
    resumed = train(replace(config, max_steps=3), rigged_hand, tmp_path / "run", output, command="x", progress=False)
    assert resumed.step == 3 and resumed.losses[:2] == first.losses and len(resumed.losses) == 3
    assert (tmp_path / "run" / "curve.png").stat().st_size > 0
    decoder, card = load_decoder(output)
    assert isinstance(decoder, OccupancyDecoder)
    saved = json.loads(output.with_suffix(".json").read_text())
    assert saved["training"]["steps"] == 3 and saved["asset"]["license"] == "MIT"
    assert card["sha256"] == saved["sha256"]


def test_fine_tuning_starts_from_the_given_weights_and_names_them_in_the_card(rigged_hand, tmp_path):
    config = TrainConfig(hands_per_step=2, labels=TINY_LABELS, max_steps=1, time_budget_s=600.0, val_hands=2)
    start = tmp_path / "start.safetensors"
    train(config, rigged_hand, tmp_path / "first", start, command="halo train base", progress=False)
    initial, initial_card = load_decoder(start)
    tuned_path = tmp_path / "tuned.safetensors"
    train(config, rigged_hand, tmp_path / "second", tuned_path, command="x", progress=False, init=start)
    tuned, _ = load_decoder(tuned_path)
    # One small Adam step from the initial weights: close to them, far closer than a fresh initialisation.
    fresh = OccupancyDecoder().input_weight
    step = (tuned.input_weight - initial.input_weight).abs().max()
    assert 0 < step < 0.1 * (fresh - initial.input_weight).abs().max()
    card = json.loads(tuned_path.with_suffix(".json").read_text())
    assert card["training"]["initialised_from"]["sha256"] == initial_card["sha256"]
