"""``--compile``: `compile_network`, which ``torch.compile``s a network for kldiv's
rounds with the power iteration of its spectral norms run eagerly, outside
the graph, and the module it returns."""

from __future__ import annotations

import types

import torch
from torch import nn


def _spectral_norms(net: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """The (layer, spectral-norm parametrisation) pairs of ``net`` (torch's ``spectral_norm``)."""
    from torch.nn.utils import parametrize

    out = []
    for m in net.modules():
        if parametrize.is_parametrized(m, "weight"):
            out += [(m, p) for p in m.parametrizations.weight if hasattr(p, "_u") and hasattr(p, "_v")]
    return out


class _Compiled(nn.Module):
    """A network compiled by `compile_network`: the compiled module, with the power iteration
    of its spectral norms run eagerly before each call in training mode."""

    def __init__(self, net: nn.Module, mode: str = "default"):
        super().__init__()
        self.compiled = torch.compile(net, mode=None if mode == "default" else mode)
        object.__setattr__(self, "_net", net)  # the same module, not registered twice
        self._norms = _spectral_norms(net)
        for _, p in self._norms:  # no power iteration inside the graph: it would update u and v in place
            p.eval()
            p.train = types.MethodType(lambda self, mode=True: self, p)

    @torch.no_grad()
    def _power_iteration(self) -> None:
        # torch's step (u from v, then v from u), into new tensors: a graph that saved the
        # old ones for its backward pass keeps them unchanged
        for layer, p in self._norms:
            w = layer.parametrizations.weight.original
            w = w.movedim(p.dim, 0).flatten(1) if w.ndim > 1 else w
            u, v = p._u, p._v
            for _ in range(p.n_power_iterations):
                u = torch.nn.functional.normalize(torch.mv(w, v), dim=0, eps=p.eps)
                v = torch.nn.functional.normalize(torch.mv(w.H, u), dim=0, eps=p.eps)
            p._buffers["_u"], p._buffers["_v"] = u, v

    def forward(self, *args, **kwargs):
        if self._net.training:
            self._power_iteration()
        with no_donated_buffers():  # graphs compiled here save no buffer to donate
            return self.compiled(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._net, name)


def no_donated_buffers():
    """A context in which torch compiles graphs without donated buffers and accepts backward
    passes that retain the graph through them (``torch._functorch.config.donated_buffer``
    off for its duration only)."""
    import torch._functorch.config

    return torch._functorch.config.patch(donated_buffer=False)


MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's


def compile_network(net: nn.Module, mode: str = "default") -> nn.Module:
    """``torch.compile`` a network for kldiv's rounds, spectral normalisation included.

    ``mode`` is torch.compile's: ``"default"``, ``"reduce-overhead"`` (CUDA graphs,
    on a GPU), ``"max-autotune"`` or ``"max-autotune-no-cudagraphs"``.

    In training mode torch's spectral norm runs a power-iteration step in
    every forward pass, updating its vectors $u, v$ in place; compiled, that
    update is part of the graph, and a round that runs the network several
    times before back-propagating finds the vectors an earlier pass saved
    modified.  Here the parametrisations stay in eval mode inside the graph
    (they read $u, v$) and the same power-iteration step runs eagerly before
    each call in training mode, into new tensors, so every pass sees the
    vectors it was computed with — the eager semantics, one step per call.
    A round also back-propagates several players through one graph
    (``retain_graph=True``), which compiled backward passes with donated
    buffers refuse.  torch decides whether a graph donates buffers when it
    compiles it, inside the first forward call, and checks the setting again
    in each backward pass that retains the graph; the compiled network's
    calls run under [`no_donated_buffers`][kldiv.train.no_donated_buffers],
    and so do `Run`'s backward passes. A loop of your own that retains the
    graph through a compiled network wraps its backward passes in it too.
    No global setting is changed.

    Returns a module that calls the compiled network; its parameters,
    buffers and other attributes are the network's.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    return _Compiled(net, mode)
