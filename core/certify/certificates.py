"""The two certificates, as the pipeline reports them: each number with the exact procedure behind it.

* :class:`SmoothingCertificate` — Cohen et al.'s CERTIFY on the smoothed classifier
  (``core.certify.smoothing``): certified accuracy per l_2 radius, smoothed accuracy, abstentions,
  mean certified radius.
* :class:`BoundCertificate` — verified robust accuracy under IBP and/or CROWN-IBP margin lower bounds
  over the l_inf ball ∩ [0, 1] (``core.certify.bounds``).

Each is a :class:`Certificate`: its settings, fixed when it is made, and the procedure in two halves, for
a certification sharded over data-parallel ranks (``core.pipeline.evaluate``): :meth:`Certificate.examples`
computes the per-example results of a contiguous block ``[start, stop)`` of the already-drawn sample
``(x, y)`` (the pipeline draws it class-stratified) exactly as a one-process run computes them (the
smoothing noise of the examples before the block is drawn and discarded), and :meth:`Certificate.summary`
turns the per-example results of the whole sample into the certificate: metrics at the top level, plus
``procedures`` (the fractions of the sample: these get counts and intervals), ``methods`` and ``details``.
:meth:`Certificate.certify` is the one-process form, the two halves on the whole sample.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from core.certify.bounds import METHOD_DESCRIPTIONS, check_supported, verified_flags
from core.certify.smoothing import CERTIFY_METHOD, CertifySettings, certify_examples, summarize_certified
from core.errors import CoreError

Examples = dict[str, torch.Tensor]


class Certificate(ABC):
    """A certificate with its settings: the per-example results of a block of the sample, then the summary."""

    @property
    @abstractmethod
    def batch(self) -> int:
        """The batch the examples are computed in: a shard starts on a multiple of it, so every example is
        computed in the same batch as in a one-process run."""

    @abstractmethod
    def examples(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, start: int = 0, stop: int | None = None
    ) -> Examples:
        """The per-example results (one entry per example) on ``(x, y)[start:stop]``, equal to what a run
        over the whole sample gives for those examples; ``start`` is a multiple of :attr:`batch`."""

    @abstractmethod
    def summary(self, examples: Examples, y: torch.Tensor) -> dict[str, Any]:
        """The certificate of the whole sample ``(x, y)`` from its per-example results."""

    def certify(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        """The certificate of the sample ``(x, y)``, computed in one process."""
        return self.summary(self.examples(model, x, y), y)


@dataclass(frozen=True)
class SmoothingCertificate(Certificate):
    """CERTIFY every sample of ``(x, y)`` with ``settings`` (the noise is seeded by ``settings.seed``),
    reporting certified accuracy at each l_2 radius of ``radii``; ``batch_size`` noisy samples per forward."""

    settings: CertifySettings
    radii: Sequence[float]
    batch_size: int

    @property
    def batch(self) -> int:
        return 1  # every example draws its own noise: any block boundary gives the one-process numbers

    def examples(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, start: int = 0, stop: int | None = None
    ) -> Examples:
        """CERTIFY's per-example results on ``x[start:stop]`` (``certify_examples``)."""
        if len(x) == 0 or len(x) != len(y):
            raise CoreError("invalid_dataset", "dataset", "certification needs a non-empty (x, y) pair of equal length")
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                num_classes = int(model(x[:1]).shape[1])
            return certify_examples(model, x, self.settings, self.batch_size, num_classes, start, stop)
        finally:
            model.train(was_training)

    def summary(self, examples: Examples, y: torch.Tensor) -> dict[str, Any]:
        st = self.settings
        res = summarize_certified(examples, y, st, list(self.radii))
        setting = (
            f"{CERTIFY_METHOD} (sigma={st.sigma:g}, n0={res['n0']}, n={res['n']}, alpha={res['alpha']:g}, "
            f"noise seed {st.seed}) on {res['num_samples']} test samples"
        )
        out: dict[str, Any] = {}
        procedures: dict[str, str] = {}
        for r, acc in res["certified_accuracy_at"].items():
            key = f"certified_acc@{r:g}"
            out[key] = acc
            procedures[key] = f"certified accuracy of the smoothed classifier at l_2 radius {r:g}: {setting}"
        out["smoothed_acc"] = res["clean_smoothed_accuracy"]
        procedures["smoothed_acc"] = (
            f"accuracy of the smoothed classifier's plurality vote over the n samples: {setting}"
        )
        out["abstain_rate"] = res["abstain_rate"]
        procedures["abstain_rate"] = f"fraction of abstentions (pA_lower < 1/2): {setting}"
        out["mean_certified_radius"] = res["mean_certified_radius"]  # a radius, not a fraction: no procedure row
        methods = {key: CERTIFY_METHOD for key in out}
        return {**out, "procedures": procedures, "methods": methods, "details": res, "method": CERTIFY_METHOD}


@dataclass(frozen=True)
class BoundCertificate(Certificate):
    """Verified robust accuracy under each bound method of ``bounds`` at l_inf ``eps``, ``batch_size``
    examples per bound pass; ``extra_details`` are added to the certificate's details."""

    eps: float
    bounds: Sequence[str]
    batch_size: int
    extra_details: dict[str, Any] = field(default_factory=dict)

    @property
    def batch(self) -> int:
        return self.batch_size

    def examples(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, start: int = 0, stop: int | None = None
    ) -> Examples:
        """Per example of ``(x, y)[start:stop]``: verified under each bound method (``verified_<method>``)
        and clean-correct (``correct``)."""
        check_supported(model)
        xs, ys = x[start:stop], y[start:stop]
        out: Examples = {}
        for method in self.bounds:
            out[f"verified_{method}"], out["correct"] = verified_flags(
                model, (xs, ys), self.eps, method, self.batch_size
            )
        return out

    def summary(self, examples: Examples, y: torch.Tensor) -> dict[str, Any]:
        eps, total = self.eps, len(y)
        out: dict[str, Any] = {}
        procedures: dict[str, str] = {}
        methods: dict[str, str] = {}
        details: dict[str, Any] = {
            "eps": eps,
            "num_samples": total,
            "norm": "linf",
            "domain": "[0, 1]",
            **self.extra_details,
        }
        for method in self.bounds:
            flags = examples[f"verified_{method}"]
            verified, counted = int(flags.sum()), len(flags)
            key = f"verified_acc_{method}"
            out[key] = verified / max(1, counted)
            methods[key] = METHOD_DESCRIPTIONS[method]
            procedures[key] = (
                f"verified robust accuracy: every margin z_y - z_j lower-bounded above 0 by "
                f"{METHOD_DESCRIPTIONS[method]}, over the l_inf ball eps={eps:.4g} intersected with [0, 1], "
                f"on {counted} test samples"
            )
            details["clean_acc"] = int(examples["correct"].sum()) / max(1, counted)
        return {**out, "procedures": procedures, "methods": methods, "details": details}
