"""DomainLossTracker sums against a per-sequence loop; absent domains never give NaN."""
import numpy as np
import torch

from megadrp.dro import DomainLossTracker, mean_losses


def test_sums_counts_and_reset():
    g = torch.Generator().manual_seed(0)
    tr = DomainLossTracker(4)
    want_sum, want_cnt = np.zeros(4), np.zeros(4)
    for _ in range(3):  # micro-batches of one step
        loss = torch.rand(5, 7, generator=g) * 3
        ids = torch.randint(0, 3, (5,), generator=g)  # domain 3 never appears
        mask = torch.rand(5, 7, generator=g) > 0.3
        loss[~mask] = float("nan")  # a masked position may hold garbage; it must not leak in
        tr.add(loss, ids, mask)
        for b in range(5):
            want_sum[ids[b]] += loss[b][mask[b]].double().sum().item()
            want_cnt[ids[b]] += mask[b].sum().item()
    s, c = tr.reduce()
    assert s.dtype == torch.float64
    np.testing.assert_allclose(s.numpy(), want_sum, rtol=1e-12)
    np.testing.assert_array_equal(c.numpy(), want_cnt)
    mean, present = mean_losses(s, c)
    assert not torch.isnan(mean).any() and present.tolist() == [c_ > 0 for c_ in want_cnt]
    assert mean[3].item() == 0.0
    s2, c2 = tr.reduce()  # reset after reduce
    assert s2.abs().sum() == 0 and c2.sum() == 0


def test_no_mask_counts_every_token_and_numpy_means():
    tr = DomainLossTracker(2)
    tr.add(torch.ones(3, 4) * 2.0, torch.tensor([1, 1, 1]), None)
    s, c = tr.reduce()
    assert c.tolist() == [0.0, 12.0] and s.tolist() == [0.0, 24.0]
    mean, present = mean_losses(s.numpy(), c.numpy())
    assert mean.tolist() == [0.0, 2.0] and present.tolist() == [False, True]
