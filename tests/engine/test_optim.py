"""An optimizer reset is a fresh optimizer, with or without a sharded save in between."""

import torch

from refinery.engine import dist
from refinery.engine.optim import reset_state


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))


def _step(model, opt, seed):
    g = torch.Generator().manual_seed(seed)
    opt.zero_grad(set_to_none=True)
    model(torch.randn(3, 4, generator=g)).pow(2).sum().backward()
    opt.step()


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


def test_reset_state_takes_a_fresh_optimizers_step(tmp_path):
    used = _model()
    opt = torch.optim.AdamW(used.parameters(), lr=1e-2, weight_decay=0.1)
    for s in range(3):
        _step(used, opt, s)
    fresh = _model()
    fresh.load_state_dict(used.state_dict())
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-2, weight_decay=0.1)

    reset_state(opt)
    assert all(float(v["step"]) == 0 and not v["exp_avg"].any() for v in opt.state.values())
    # a sharded save right after the reset must not change what comes next (an empty state would be filled by
    # DCP with a zero-gradient step: checked by replacing reset_state with opt.state.clear())
    dist.save_sharded(tmp_path / "ck", used, opt, 3)
    for s in (10, 11):
        _step(used, opt, s)
        _step(fresh, fresh_opt, s)
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(_params(used), _params(fresh)))

    # and the saved checkpoint loads into a new model/optimizer that continues like the fresh one from the reset
    again = _model(1)
    again_opt = torch.optim.AdamW(again.parameters(), lr=1e-2, weight_decay=0.1)
    assert dist.load_sharded(tmp_path / "ck", again, again_opt)[0] == 3
    ref = _model()
    ref.load_state_dict(again.state_dict())
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=0.1)
    for s in (10, 11):
        _step(again, again_opt, s)
        _step(ref, ref_opt, s)
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(_params(again), _params(ref)))
