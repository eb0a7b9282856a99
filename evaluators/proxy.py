"""Zero-cost proxies: score an architecture at initialisation from one mini-batch, without training.

Proxies (``proxy_score(name, model, x, y)``; each works on a deep copy, so the caller's model,
its buffers and its gradients are left exactly as they were):

``synflow``  (Tanaka et al. 2020; as a NAS proxy, Abdelfattah et al. 2021). The copy is cast to
    float64 (no overflow in deep nets), every parameter is replaced by its absolute value, and the
    copy is put in eval mode, so batch norm applies its running statistics (mean 0, variance 1 at
    initialisation: a near-identity, nothing is zeroed out) and dropout is off. An all-ones input of
    one sample of ``x``'s shape goes through; R = sum of the outputs; the score is
    sum over all parameters that receive a gradient of |theta * dR/dtheta|. The labels are unused.
``naswot``   (Mellor et al. 2021, "Neural Architecture Search without Training"). The copy is in
    train mode (batch norm uses the batch's statistics, as the network is at initialisation) with
    dropout switched to eval so the score is a deterministic function of weights and batch; no
    gradients. A forward pre-hook on every ReLU-family activation (ReLU, ReLU6, LeakyReLU, Hardswish,
    GELU, SiLU, ELU, Mish) records the binary code ``input > 0`` of each sample; concatenated over
    all activations these give codes c_i of length N_A. K[i, j] = number of positions where c_i and
    c_j agree (= N_A - Hamming distance); the score is log|det K| (float64 ``slogdet``; -inf when K is
    singular, e.g. two identical samples in the batch). The labels are unused.
``snip``     (Lee et al. 2019, connection sensitivity). The copy in train mode with dropout off (as
    for naswot), in the model's own dtype; L = cross-entropy of (model(x), y); the score is
    sum over all parameters that receive a gradient of |theta * dL/dtheta|.
``flops``, ``params``: the baselines the zero-cost literature found hard to beat. They need no
    forward pass: ``ProxyEvaluator`` takes them from the space's exact tables (``space.flops(arch)``,
    ``space.params(arch)``); ``proxy_score`` raises ValueError for them.

Note: the reference implementations of synflow and snip (Abdelfattah et al.) sum over the weights of
convolution and linear layers only; here every parameter with a gradient counts (batch-norm affine
parameters and biases too), which for a bias-free conv/linear network is the same thing.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from xsearch.core.data import stratified_split
from xsearch.core.errors import SettingError
from xsearch.core.training import resolve_device, seed_everything

from ._base import EVALUATORS, Evaluator

PROXIES = ("synflow", "naswot", "snip", "flops", "params")
SPACE_PROXIES = ("flops", "params")
# activations whose "input > 0" pattern defines the NASWOT binary code
NASWOT_ACTIVATIONS: tuple[type[nn.Module], ...] = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardswish, nn.GELU,
                                                   nn.SiLU, nn.ELU, nn.Mish)


def _check_name(name: str) -> None:
    if name not in PROXIES:
        raise SettingError(f"unknown proxy {name!r}; valid proxies: {', '.join(PROXIES)}")


def _train_without_dropout(model: nn.Module) -> nn.Module:
    """Train mode (batch norm on batch statistics) but every dropout layer off: deterministic."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.eval()
    return model


def _sum_abs_theta_grad(model: nn.Module) -> float:
    total = torch.zeros((), dtype=torch.float64)
    for p in model.parameters():
        if p.grad is not None:
            total = total + (p.detach() * p.grad).abs().sum().double().cpu()
    return float(total)


def synflow(model: nn.Module, x: torch.Tensor) -> float:
    """Synaptic flow of ``model``: see the module docstring."""
    net = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
    net.zero_grad(set_to_none=True)
    ones = torch.ones((1, *x.shape[1:]), dtype=torch.float64, device=x.device)
    net(ones).sum().backward()
    return _sum_abs_theta_grad(net)


def naswot_kernel(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The NASWOT matrix K (float64, batch x batch): K[i, j] = positions where the codes of i and j agree."""
    net = _train_without_dropout(copy.deepcopy(model))
    n = x.shape[0]
    kernel = torch.zeros((n, n), dtype=torch.float64, device=x.device)

    def record(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        # a pre-hook sees the input before an in-place activation overwrites it
        # agreements = c_i.c_j + (1 - c_i).(1 - c_j) = N - |c_i| - |c_j| + 2 c_i.c_j, one matmul; float32
        # is exact here (0/1 entries, integer partial sums far below 2**24), the total is kept in float64
        code = (inputs[0].detach() > 0).reshape(n, -1).float()
        ones = code.sum(1, dtype=torch.float64)
        kernel.add_(2.0 * (code @ code.T).double() - ones[:, None] - ones[None, :] + code.shape[1])

    handles = [m.register_forward_pre_hook(record) for m in net.modules() if isinstance(m, NASWOT_ACTIVATIONS)]
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in handles:
            h.remove()
    return kernel


def naswot(model: nn.Module, x: torch.Tensor) -> float:
    """log|det K| of the NASWOT matrix (``naswot_kernel``)."""
    return float(torch.linalg.slogdet(naswot_kernel(model, x)).logabsdet)


def snip(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Connection sensitivity: sum of |theta * dL/dtheta| for the cross-entropy loss on (x, y)."""
    net = _train_without_dropout(copy.deepcopy(model))
    net.zero_grad(set_to_none=True)
    F.cross_entropy(net(x), y).backward()
    return _sum_abs_theta_grad(net)


def proxy_score(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Zero-cost score ``name`` of ``model`` at its current weights on the batch (x, y); higher is better."""
    _check_name(name)
    if name in SPACE_PROXIES:
        raise ValueError(f"proxy {name!r} comes from the search space (space.{name}(arch)), not from a model "
                         f"forward pass; proxy_score computes {', '.join(p for p in PROXIES if p not in SPACE_PROXIES)}")
    if name == "synflow":
        return synflow(model, x)
    if name == "naswot":
        return naswot(model, x)
    return snip(model, x, y)


@EVALUATORS.register("proxy")
class ProxyEvaluator(Evaluator):
    """Score ``space.build(arch)`` at initialisation with a zero-cost proxy; no training, no test accuracy.

    Metrics: ``score`` (higher is better), ``proxy``, ``flops``, ``params``, ``seconds``, ``seed``.
    The model is built after ``seed_everything(seed)`` and scored on one fixed, class-stratified,
    unaugmented mini-batch of ``batch_size`` training images chosen by ``seed`` (the same batch for
    every architecture, so scores are comparable; cached per dataset and seed).
    """

    name = "proxy"
    reports_accuracy = False  # its metrics carry no test accuracy

    @property
    def label(self) -> str:
        return f"proxy-{self.proxy}"

    @property
    def score_name(self) -> str:
        return f"{self.proxy} score"

    result_name = score_name  # evaluate() reports the same proxy score

    def __init__(self, proxy: str = "synflow", batch_size: int = 64, device: str = "auto",
                 show_progress: bool = True) -> None:
        _check_name(proxy)
        if batch_size < 1:
            raise SettingError(f"batch_size must be at least 1, got {batch_size}")
        self.proxy, self.batch_size = proxy, batch_size
        self.device = resolve_device(device)
        self.show_progress = show_progress  # nothing long-running to show; kept for the common signature
        self.needs_data = proxy not in SPACE_PROXIES
        self._batch_cache: dict[tuple[int, int], tuple[Any, torch.Tensor, torch.Tensor]] = {}

    def batch(self, data: Any, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The fixed scoring batch for (data, seed), on the evaluator's device."""
        key = (id(data), seed)
        cached = self._batch_cache.get(key)
        if cached is not None and cached[0] is data:  # identity check: an id can be reused after collection
            return cached[1], cached[2]
        indices = stratified_split(data.train.targets, seed, size=self.batch_size)[0]
        x, y = next(data.batches("train", indices, len(indices), shuffle=False, augment=False, device=self.device))
        self._batch_cache = {key: (data, x, y)}  # one entry: a search uses one dataset and seed
        return x, y

    def evaluate(self, space: Any, arch: dict[str, str], data: Any, seed: int = 0,
                 workdir: Path | None = None) -> dict[str, Any]:
        t0 = time.time()
        flops, params = space.flops(arch), space.params(arch)
        if self.proxy in SPACE_PROXIES:
            score = float(flops if self.proxy == "flops" else params)
        else:
            x, y = self.batch(data, seed)
            seed_everything(seed)
            model = space.build(arch).to(self.device)
            score = proxy_score(self.proxy, model, x, y)
        return {"score": score, "proxy": self.proxy, "flops": flops, "params": params,
                "seconds": time.time() - t0, "seed": seed}

    def score(self, space: Any, arch: dict[str, str], data: Any, seed: int = 0,
              report: Any = None) -> dict[str, Any]:  # no per-epoch reports (reports_epochs)
        return self.evaluate(space, arch, data, seed)
