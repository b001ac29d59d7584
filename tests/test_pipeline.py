"""The two-stage pipeline split (common/models/pipeline.py) on two CPU "devices"."""

from __future__ import annotations

import pytest
import torch

from common.errors import ModelError
from common.models import ModelConfig, build_model
from common.models.pipeline import TwoStagePipeline


def _model(pooling: str = "mean"):
    torch.manual_seed(0)
    return build_model(ModelConfig(family="transformer", vocab_size=60, num_classes=3,
                                   max_len=10, d_model=32, n_layers=4, n_heads=4, d_ff=64,
                                   dropout=0.0, pooling=pooling)).eval()


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_the_split_computes_what_the_whole_model_computes(pooling):
    ids = torch.randint(0, 60, (6, 10), generator=torch.Generator().manual_seed(1))
    ids[:, 7:] = 0  # padding
    whole = _model(pooling)
    expected = whole(ids)
    split = TwoStagePipeline(_model(pooling), ("cpu", "cpu"), micro_batches=3)
    torch.testing.assert_close(split(ids), expected)
    split(ids).sum().backward()  # it trains: gradients reach both stages
    assert split.first[0].ff.fc_in.weight.grad is not None
    assert split.model.head.weight.grad is not None


def test_a_split_outside_the_blocks_is_refused():
    with pytest.raises(ModelError, match="0 < split < 4"):
        TwoStagePipeline(_model(), ("cpu", "cpu"), split=4)
