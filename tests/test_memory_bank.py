"""The memory bank's contract, against brute force: every anchor-positive pair of the batch with its
semi-hard negatives from the batch and the queue; the queue's negatives count; the queue rotates
and survives a state_dict round trip."""
import numpy as np
import pytest
import torch

from faceverify.train.memory_bank import MemoryBankTriplet

pytestmark = pytest.mark.data_free


def brute_force_loss(batch, labels, memory, memory_labels, margin):
    batch = batch / np.linalg.norm(batch, axis=1, keepdims=True)
    keys = list(zip(batch, labels)) + [(m, ml) for m, ml in zip(memory, memory_labels) if ml >= 0]
    terms = []
    for i, (anchor, label) in enumerate(zip(batch, labels)):
        for j in range(len(batch)):
            if j == i or labels[j] != label:
                continue
            d_ap = np.linalg.norm(anchor - batch[j])
            for key, key_label in keys:
                d_an = np.linalg.norm(anchor - key)
                if key_label != label and d_ap < d_an < d_ap + margin:
                    terms.append(d_ap - d_an + margin)
    return np.mean(terms) if terms else 0.0


NO_MEMORY = np.zeros((0, 8)), np.zeros(0)


def test_loss_mines_semihard_negatives_from_batch_and_queue():
    torch.manual_seed(0)
    bank = MemoryBankTriplet(dim=8, memory_size=32, margin=0.3)
    first = torch.nn.functional.normalize(torch.randn(16, 8), dim=1)
    first_labels = torch.arange(8).repeat_interleave(2)
    alone = float(bank(first, first_labels))  # empty queue: negatives from the batch alone
    assert alone == pytest.approx(brute_force_loss(first.numpy(), first_labels.numpy(), *NO_MEMORY, 0.3), abs=1e-5)
    batch = torch.randn(12, 8, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 20, 20, 21, 21, 22, 22])  # 20-22 are not queued
    loss = bank(batch, labels)
    expected = brute_force_loss(batch.detach().numpy(), labels.numpy(), first.numpy(), first_labels.numpy(), 0.3)
    assert float(loss.detach()) == pytest.approx(expected, abs=1e-5)
    without_queue = brute_force_loss(batch.detach().numpy(), labels.numpy(), *NO_MEMORY, 0.3)
    assert expected != pytest.approx(without_queue)  # the queued negatives took part
    loss.backward()
    assert batch.grad.abs().sum() > 0


def test_queue_rotates_and_survives_a_state_dict_round_trip():
    bank = MemoryBankTriplet(dim=4, memory_size=10)
    for step in range(3):  # 3 × 4 = 12 entries into 10 slots: wraps around
        bank(torch.randn(4, 4), torch.tensor([step * 2, step * 2, step * 2 + 1, step * 2 + 1]))
    assert int(bank.position) == 2
    assert bank.memory_labels.tolist() == [5, 5, 1, 1, 2, 2, 3, 3, 4, 4]  # the oldest two replaced
    restored = MemoryBankTriplet(dim=4, memory_size=10)
    restored.load_state_dict(bank.state_dict())
    assert torch.equal(restored.memory, bank.memory) and int(restored.position) == 2
    assert torch.equal(restored.memory_labels, bank.memory_labels)
