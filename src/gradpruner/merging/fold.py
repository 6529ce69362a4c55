"""The linear fold: a linear map carries the hidden state around a removed block of layers, folded
into the MLP down projection of the last kept layer before the block.

In kept layer r (just before the block b..e): h' = h + attention, out = h' + M with M = MLP(h'),
the MLP's output (its down projection's). With the block removed, out should be what the block
gave, L_e. Find T minimising ||M T - (L_e - h')||^2 + ridge * ||T||^2 over the calibration tokens,
and let layer r output h' + M T: the down projection W (out x in, M = a W^T) becomes T^T W, so the
model stays a plain Hugging Face model with no new module.

This is ReplaceMe's least-squares transform (Shopkhoev et al. 2025). `fit="cosine"` is ReplaceMe's
other objective: T minimising the mean cosine distance 1 - cos(h' + M T, L_e) over the tokens (the
direction of the state the next layer normalises), by Adam on every calibration token at once,
started from the least-squares map (ReplaceMe starts from the identity) for `COSINE_STEPS` steps;
it keeps every token's states in memory (3 x tokens x hidden fp32). Differences here: padding
positions are left out of the sums; the ridge term is relative (`ridge` times the mean of the
diagonal of M^T M, so one value fits every model's scale; ReplaceMe's `alpha` is absolute and 0 by
default); several blocks are fitted one after the other, each on the model with the blocks before
it already folded and skipped (ReplaceMe fits every block on the dense model); the sums are
accumulated in float64 and the map solved in float64, then applied to the weight in fp32; a block
that starts at layer 0 has no layer before it and is dropped unfolded. Layers whose MLP output
passes a norm before the residual sum (Gemma 2 and 3: `post_feedforward_layernorm`) cannot take
the map into a weight and are refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..catalog import FOLD_FITS
from ..errors import GradPrunerError
from ..model.surgery import decoder_layers, get_adapter, layer_prefix, skipping
from ..plan import MergeStep
from ..progress import track
from ..tasks.examples import PadCollator, pad_id, training_features

DEFAULT_RIDGE = 1e-4
COSINE_STEPS = 200
COSINE_LR = 1e-4


@dataclass(frozen=True)
class FoldSettings:
    """The fold's calibration: the first `examples` training examples, the relative ridge, and
    the fit: least squares ("lstsq") or cosine distance ("cosine")."""

    examples: int = 128
    ridge: float = DEFAULT_RIDGE
    fit: str = "lstsq"

    def __post_init__(self):
        if isinstance(self.examples, bool) or not isinstance(self.examples, int) or self.examples < 1:
            raise GradPrunerError(f"fold examples must be a positive integer, got {self.examples!r}")
        if not isinstance(self.ridge, (int, float)) or not self.ridge >= 0:
            raise GradPrunerError(f"fold ridge must be at least 0, got {self.ridge!r}")
        if self.fit not in FOLD_FITS:
            raise GradPrunerError(f"fold fit must be one of {', '.join(FOLD_FITS)}, got {self.fit!r}")


@dataclass(frozen=True)
class Calibration:
    """The examples whose token states fit the fold (training examples, never held-out or test
    items): their gold (context, answer) pairs, every non-padding token."""

    tokenizer: object
    examples: list
    batch_size: int = 8
    max_length: int = 256

    def batches(self) -> list[dict]:
        if not self.examples:
            raise GradPrunerError("the linear fold needs calibration examples (task data)")
        feats = training_features(self.tokenizer, self.examples, self.max_length)
        collate = PadCollator(pad_id(self.tokenizer))
        return [collate(feats[i:i + self.batch_size]) for i in range(0, len(feats), self.batch_size)]


def fold_steps(removed, num_layers: int) -> tuple[MergeStep, ...]:
    """One step per run of consecutive removed layers that has a kept layer before it: the
    receiver is that layer, the donors the run."""
    removed = sorted(set(removed))
    steps, run = [], []
    for i in removed:
        if run and i != run[-1] + 1:
            steps.append(run)
            run = []
        run.append(i)
    if run:
        steps.append(run)
    return tuple(MergeStep(r[0] - 1, tuple(r)) for r in steps if r[0] > 0 and len(r) < num_layers)


def fold_refusal(model_or_config) -> str | None:
    """Why the linear fold cannot apply to this architecture (known from its config alone), or
    None when it can."""
    if get_adapter(model_or_config).mlp_output_norm:
        return ("--merge fold: this architecture normalises the MLP output before the residual "
                "sum, so a linear map cannot be folded into a weight; use --merge none or a "
                "number of donors")
    return None


def check_foldable(model_or_config) -> None:
    """Refuse the linear fold on an architecture it cannot apply to (before any model loads,
    given the config)."""
    refusal = fold_refusal(model_or_config)
    if refusal:
        raise GradPrunerError(refusal)


def down_projection(layer) -> torch.nn.Linear:
    """The MLP's output projection of a decoder layer, whose output joins the residual stream."""
    proj = getattr(getattr(layer, "mlp", None), "down_proj", None)
    if not isinstance(proj, torch.nn.Linear):
        raise GradPrunerError("--merge fold needs layers with mlp.down_proj (Llama-style MLPs); use "
                              "--merge none or a number of donors")
    return proj


def least_squares_map(gram: torch.Tensor, cross: torch.Tensor, ridge: float) -> torch.Tensor:
    """T minimising ||X T - Y||^2 + lambda ||T||^2 from X^T X (`gram`) and X^T Y (`cross`), with
    lambda = `ridge` times the mean of X^T X's diagonal."""
    lam = ridge * float(gram.diagonal().mean())
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    return torch.linalg.solve(gram + lam * eye, cross)


def block_states(model, step: MergeStep, batches: list[dict], skipped
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per batch, over its non-padding tokens: the receiver's MLP output M, the receiver's output
    h' + M and the block's output L_e (each [tokens, hidden], as computed), with the `skipped`
    layers passing their input through."""
    layers = decoder_layers(model)
    receiver, last = layers[step.receiver], layers[step.donors[-1]]
    seen: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(module, args, output):
            seen[name] = (output[0] if isinstance(output, tuple) else output).detach()
        return hook

    handles = [receiver.mlp.register_forward_hook(keep("mlp")), receiver.register_forward_hook(keep("out")),
               last.register_forward_hook(keep("end"))]
    device = next(model.parameters()).device
    try:
        with skipping(model, skipped):
            for batch in batches:
                mask = batch["attention_mask"].bool().to(device)
                with torch.inference_mode():
                    model(input_ids=batch["input_ids"].to(device),
                          attention_mask=batch["attention_mask"].to(device), use_cache=False,
                          logits_to_keep=1)
                # indexed outside inference mode: plain tensors
                yield seen["mlp"][mask], seen["out"][mask], seen["end"][mask]
    finally:
        for handle in handles:
            handle.remove()


def block_sums(model, step: MergeStep, batches: list[dict], skipped) -> tuple[torch.Tensor, torch.Tensor]:
    """X^T X and X^T Y (float64) over the non-padding tokens of `batches`, X the MLP output of
    the receiver and Y what the block adds after it (its output minus the receiver's state
    before the MLP), with the `skipped` layers passing their input through."""
    hidden = model.config.hidden_size
    gram = torch.zeros(hidden, hidden, dtype=torch.float64)
    cross = torch.zeros(hidden, hidden, dtype=torch.float64)
    for mlp, out, end in block_states(model, step, batches, skipped):
        x = mlp.double().cpu()
        y = (end - out).double().cpu() + x
        gram += x.T @ x
        cross += x.T @ y
    return gram, cross


def cosine_distance(x: torch.Tensor, before: torch.Tensor, end: torch.Tensor,
                    transform: torch.Tensor) -> torch.Tensor:
    """The mean over tokens of 1 - cos(h' + M T, L_e) (`x` = M, `before` = h', `end` = L_e)."""
    return (1 - torch.nn.functional.cosine_similarity(before + x @ transform, end, dim=-1)).mean()


def cosine_map(x: torch.Tensor, before: torch.Tensor, end: torch.Tensor, start: torch.Tensor,
               steps: int = COSINE_STEPS, lr: float = COSINE_LR) -> torch.Tensor:
    """T minimising `cosine_distance` by `steps` full-batch Adam steps from `start` (fp32)."""
    transform = start.float().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([transform], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            optimizer.zero_grad()
            cosine_distance(x, before, end, transform).backward()
            optimizer.step()
    return transform.detach().double()


def fit_map(model, step: MergeStep, batches: list[dict], skipped, ridge: float,
            fit: str = "lstsq") -> torch.Tensor:
    """The block's linear map by `fit`: least squares, or cosine distance from there."""
    if fit == "lstsq":
        return least_squares_map(*block_sums(model, step, batches, skipped), ridge)
    x, out, end = (torch.cat(parts).float().cpu() for parts in
                   zip(*block_states(model, step, batches, skipped)))  # one pass for both fits
    xd = x.double()
    start = least_squares_map(xd.T @ xd, xd.T @ ((end - out).double() + xd), ridge)
    return cosine_map(x, out - x, end, start)


def fold_blocks(model, steps: tuple[MergeStep, ...], calibration: Calibration,
                ridge: float = DEFAULT_RIDGE, fit: str = "lstsq") -> dict[str, int]:
    """Fold every step's block into its receiver's down projection, in place, one block after
    the other (each map fitted by `fit`); returns the changed entries per weight (every entry of
    each down projection)."""
    check_foldable(model)
    if fit not in FOLD_FITS:
        raise GradPrunerError(f"fold fit must be one of {', '.join(FOLD_FITS)}, got {fit!r}")
    layers = decoder_layers(model)
    for step in steps:
        down_projection(layers[step.receiver])
    batches = calibration.batches()
    changed: dict[str, int] = {}
    folded: list[int] = []
    for step in track(steps, "blocks folded"):
        transform = fit_map(model, step, batches, folded, ridge, fit)
        proj = down_projection(layers[step.receiver])
        with torch.no_grad():
            weight = transform.T.float().to(proj.weight.device) @ proj.weight.float()
            proj.weight.copy_(weight.to(proj.weight.dtype))
            if proj.bias is not None:
                proj.bias.copy_((proj.bias.float() @ transform.float().to(proj.bias.device)).to(proj.bias.dtype))
        changed[f"{layer_prefix(model)}.{step.receiver}.mlp.down_proj.weight"] = proj.weight.numel()
        folded += list(step.donors)
    return changed
