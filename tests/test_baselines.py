import numpy as np
import pytest
import torch

from recutils.baselines import baseline_config, canonical, split_fingerprint
from recutils.training import sequence_scorer


def _scores(model, data):
    return sequence_scorer(model, data, "test")(np.arange(data.n_users))


def test_a_cache_hit_gives_the_same_model_and_leaves_the_rngs_alone(tiny, tmp_path):
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    trained, hist, cached = canonical("SASRec", tiny, "smoke", seed=0, cache=tmp_path)
    after_miss = torch.rand(3)
    torch.manual_seed(123)
    loaded, hist2, cached2 = canonical("SASRec", tiny, "smoke", seed=0, cache=tmp_path)
    after_hit = torch.rand(3)
    assert (cached, cached2) == (False, True)
    assert torch.equal(before, after_miss) and torch.equal(before, after_hit)
    assert torch.equal(_scores(trained, tiny), _scores(loaded, tiny))
    assert hist2.epochs == hist.epochs and hist2.best_epoch == hist.best_epoch
    assert len(list(tmp_path.glob("*.pt"))) == 1


def test_the_cache_key_follows_the_seed_kind_and_split(tiny, tmp_path):
    canonical("SASRec", tiny, "smoke", seed=0, cache=tmp_path)
    assert canonical("SASRec", tiny, "smoke", seed=1, cache=tmp_path)[2] is False
    assert canonical("BERT4Rec", tiny, "smoke", seed=0, cache=tmp_path)[2] is False
    other = tiny.subsample_users(tiny.n_users - 1, seed=0)
    assert split_fingerprint(other) != split_fingerprint(tiny)
    assert canonical("SASRec", other, "smoke", seed=0, cache=tmp_path)[2] is False
    assert len(list(tmp_path.glob("*.pt"))) == 4


def test_without_a_cache_nothing_is_written_and_training_is_seeded(tiny, tmp_path):
    a, _, _ = canonical("SASRec (BCE, 1 negative)", tiny, "smoke", seed=3)
    b, _, _ = canonical("SASRec (BCE, 1 negative)", tiny, "smoke", seed=3)
    assert torch.equal(_scores(a, tiny), _scores(b, tiny))
    assert not list(tmp_path.iterdir())


def test_unknown_baselines_and_scales_are_rejected():
    with pytest.raises(ValueError, match="unknown baseline"):
        baseline_config("GRU4Rec", "smoke")
    with pytest.raises(ValueError, match="scale"):
        baseline_config("SASRec", "huge")
    assert baseline_config("BERT4Rec", "default").train.epochs == 35
