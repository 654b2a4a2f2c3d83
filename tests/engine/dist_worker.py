"""torchrun worker for test_dist.py, and the model/batch/step it shares with the in-process reference.

    python -m torch.distributed.run --nproc_per_node 2 --standalone dist_worker.py train OUT CKPT EXPORT
    python -m torch.distributed.run --nproc_per_node 2 --standalone dist_worker.py resume OUT CKPT

Rank 0 writes the results (full tensors, via torch.save) to OUT.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from refinery.engine import dist as D

SEED, LR, ROWS, SEQ, VOCAB = 0, 1e-3, 4, 9, 64
# loss tokens per row (of SEQ - 1 predicted positions): rank 0's half has 15, rank 1's has 4
TOKENS_PER_ROW = (8, 7, 3, 1)


def tiny_model(seed: int = SEED):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, vocab_size=VOCAB, max_position_embeddings=64,
                      tie_word_embeddings=False, dtype="float32")
    return LlamaForCausalLM(cfg).float()


def make_optimizer(model):
    return torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch of ``step``: input ids [ROWS, SEQ] and a loss mask [ROWS, SEQ - 1] over the targets."""
    g = torch.Generator().manual_seed(100 + step)
    ids = torch.randint(0, VOCAB, (ROWS, SEQ), generator=g)
    mask = torch.zeros(ROWS, SEQ - 1)
    for r, n in enumerate(TOKENS_PER_ROW):
        mask[r, SEQ - 1 - n:] = 1.0  # the last n targets, like a completion after a prompt
    return ids, mask


def token_loss_sum(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=ids).logits[:, :-1].float()
    ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1), reduction="none")
    return (ce * mask.reshape(-1)).sum()


def full_grads(model) -> dict[str, torch.Tensor]:
    """Every parameter's full gradient (collective under FSDP2)."""
    from torch.distributed.tensor import DTensor

    out = {}
    for name, p in model.named_parameters():
        g = p.grad
        out[name] = (g.full_tensor() if isinstance(g, DTensor) else g).detach().cpu().clone()
    return out


def train_step(model, optimizer, env: D.DistEnv, step: int, grads: dict | None = None) -> dict:
    """One optimizer step on this rank's rows of the global batch; the loss is the global token-mean."""
    ids, mask = batch(step)
    rows = D.shard_rows(ROWS, env.rank, env.world_size)
    ids, mask = ids[rows.start:rows.stop].to(env.device), mask[rows.start:rows.stop].to(env.device)
    count = D.global_token_count(mask)
    local_sum = token_loss_sum(model, ids, mask)
    (local_sum / count).backward()
    if grads is not None:
        grads.update(full_grads(model))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return D.reduce_metrics({"loss": local_sum.item() / max(mask.sum().item(), 1)}, weights=mask.sum().item())


def _snapshot(obj):
    """A deep copy of the tensors in ``obj``: full state dicts may share storage with live state (e.g. AdamW's
    ``step``, which the next step increments in place)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _snapshot(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_snapshot(v) for v in obj)
    return obj


def _full_optim(model, optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return _snapshot(get_optimizer_state_dict(model, optimizer,
                                              options=StateDictOptions(full_state_dict=True, cpu_offload=True)))


def main(argv: list[str]) -> None:
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    mode, out = argv[0], argv[1]
    env = D.init_distributed("cpu")
    res: dict = {"world_size": env.world_size}
    model = D.wrap_model(tiny_model(SEED if mode == "train" else SEED + 1), env)
    res["fsdp_modules"] = sum(isinstance(m, FSDPModule) for m in model.modules())
    res["sharded"] = isinstance(next(model.parameters()), DTensor)
    opt = make_optimizer(model)
    if mode == "train":
        ckpt, export = argv[2], argv[3]
        res["grads1"] = {}
        res["metrics1"] = train_step(model, opt, env, 1, grads=res["grads1"])
        res["after1"] = _snapshot(D.full_state_dict(model))
        res["optim1"] = _full_optim(model, opt)
        D.save_sharded(ckpt, model, opt, step=1, extra={"data_position": 2})
        res["metrics2"] = train_step(model, opt, env, 2)
        res["after2"] = D.full_state_dict(model)
        D.export_hf(model, None, export)
        # bf16 compute under FSDP2's MixedPrecisionPolicy: fp32 shards and optimizer state, bf16 all-gathers
        bf16 = D.wrap_model(tiny_model(SEED), env, precision="bf16")
        bf16_opt = make_optimizer(bf16)
        res["bf16_grads1"] = {}
        res["bf16_metrics1"] = train_step(bf16, bf16_opt, env, 1, grads=res["bf16_grads1"])
        res["bf16_dtypes"] = sorted({str(p.dtype) for p in bf16.parameters()}
                                    | {str(s["exp_avg"].dtype) for s in bf16_opt.state.values()})
    elif mode == "resume":
        res["step"], res["extra"] = D.load_sharded(argv[2], model, opt)
        res["loaded"] = _snapshot(D.full_state_dict(model))
        res["metrics2"] = train_step(model, opt, env, res["step"] + 1)
        res["after2"] = D.full_state_dict(model)
    else:
        raise SystemExit(f"unknown mode {mode}")
    if D.is_main():
        torch.save(res, out)
    D.barrier()
    D.destroy()


if __name__ == "__main__":
    main(sys.argv[1:])
