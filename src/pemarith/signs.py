"""What TIES and DARE act on, measured from the adapter files: sign conflicts and what survives.

For a composition ``sum_i c_i theta_i``, layer by layer, the signed task vectors are the kind's
``tau_i`` (LoRA: ``c_i s_i B_i A_i``; (IA)3: ``c_i (l_i - 1)``; see :mod:`pemarith.methods`). Of
the entries where at least two modules are non-zero:

- **sign conflict**: the share of entries where some ``tau_i > 0`` and some ``tau_j < 0``: the
  modules pull that weight in opposite directions, and a linear merge lets them cancel (what TIES'
  sign election resolves);
- **survives at density d**: of each ``tau_i``'s non-zero entries, the share that TIES keeps:
  in its top ``d`` by magnitude (``prune_magnitude``) and agreeing with the elected sign
  (``majority_sign_mask`` over the pruned vectors, ``total`` as PEFT); and the share of
  ``||tau_i||^2`` those entries carry.

The dense ``tau_i`` of one layer are formed at a time (float64, ``d_out x d_in`` per module):
memory is that of one layer, as the methods themselves need.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .methods import majority_sign_mask, prune_magnitude
from .module import PEM, layer_tensors


@dataclass(frozen=True)
class LayerSigns:
    entries: int  # entries where at least two modules are non-zero
    conflicts: int
    kept: tuple[int, ...]  # per module: entries TIES keeps
    nonzero: tuple[int, ...]  # per module: non-zero entries
    kept_energy: tuple[float, ...]  # per module: ||kept part||^2
    energy: tuple[float, ...]  # per module: ||tau_i||^2

    @property
    def conflict(self) -> float | None:
        return self.conflicts / self.entries if self.entries else None


@dataclass(frozen=True)
class SignReport:
    names: tuple[str, ...]
    density: float
    layers: dict[str, LayerSigns]

    def _total(self) -> LayerSigns:
        ls = list(self.layers.values())
        n = len(self.names)
        return LayerSigns(
            sum(x.entries for x in ls),
            sum(x.conflicts for x in ls),
            tuple(sum(x.kept[i] for x in ls) for i in range(n)),
            tuple(sum(x.nonzero[i] for x in ls) for i in range(n)),
            tuple(sum(x.kept_energy[i] for x in ls) for i in range(n)),
            tuple(sum(x.energy[i] for x in ls) for i in range(n)),
        )

    def conflict(self, layer: str | None = None) -> float | None:
        """The share of shared entries whose signs conflict (of one layer, or of all)."""
        return (self._total() if layer is None else self.layers[layer]).conflict

    def survives(self, layer: str | None = None) -> dict[str, float | None]:
        """Per module: the share of its non-zero entries that TIES keeps at this density."""
        x = self._total() if layer is None else self.layers[layer]
        return {n: (k / z if z else None) for n, k, z in zip(self.names, x.kept, x.nonzero)}

    def survives_energy(self, layer: str | None = None) -> dict[str, float | None]:
        """Per module: the share of ``||tau_i||^2`` in the entries TIES keeps."""
        x = self._total() if layer is None else self.layers[layer]
        return {n: (k / e if e else None) for n, k, e in zip(self.names, x.kept_energy, x.energy)}

    def to_json(self) -> dict[str, object]:
        return {
            "density": self.density,
            "conflict": self.conflict(),
            "survives": self.survives(),
            "survives_energy": self.survives_energy(),
            "layers": {k: {"conflict": self.conflict(k), "survives": self.survives(k)} for k in self.layers},
        }


def layer_signs(taus: list[np.ndarray], density: float) -> LayerSigns:
    stacked = np.stack(taus)
    nz = stacked != 0
    shared = nz.sum(axis=0) >= 2
    conflicts = shared & (stacked > 0).any(axis=0) & (stacked < 0).any(axis=0)
    pruned = np.stack([prune_magnitude(t, density) for t in taus])
    kept = (pruned != 0) & majority_sign_mask(pruned, "total")
    sq = stacked.astype(np.float64) ** 2
    return LayerSigns(
        int(shared.sum()),
        int(conflicts.sum()),
        tuple(int(k.sum()) for k in kept),
        tuple(int(z.sum()) for z in nz),
        tuple(float((s * k).sum()) for s, k in zip(sq, kept)),
        tuple(float(s.sum()) for s in sq),
    )


def sign_report(pem: PEM, density: float = 0.2) -> SignReport:
    """Sign conflicts and TIES survival of the terms of ``pem`` (coefficients included)."""
    from .methods import MergeSpec

    MergeSpec("ties", density)  # validates the density, with the methods' own message
    names = tuple(pem.terms)
    ads = [pem.adapters[n] for n in names]
    coefs = [pem.terms[n] for n in names]
    kind = pem.kind
    layers = {}
    for layer in ads[0].layers:
        taus = kind.task_vectors(layer_tensors(ads, layer), coefs, ads)
        layers[layer] = layer_signs([np.asarray(t, dtype=np.float64) for t in taus], density)
    return SignReport(names, density, layers)


def shorten(names: list[str]) -> dict[str, str]:
    """Layer names cut to what differs between them: the common dotted prefix and suffix go
    (``base_model.model.layers.0.q_proj`` ... -> ``0.q_proj``)."""
    if len(names) < 2:
        return {n: n for n in names}
    parts = [n.split(".") for n in names]
    pre = 0
    while all(len(p) > pre + 1 for p in parts) and len({p[pre] for p in parts}) == 1:
        pre += 1
    post = 0
    while all(len(p) > pre + post + 1 for p in parts) and len({p[-1 - post] for p in parts}) == 1:
        post += 1
    return {n: ".".join(p[pre : len(p) - post]) for n, p in zip(names, parts)}
