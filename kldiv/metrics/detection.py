"""Detection metrics of anomaly scores: OOD AUROC, the precision–recall curve and anomaly AUPRC."""

from __future__ import annotations

import numbers

import numpy as np

from kldiv.metrics._common import ArrayLike, _as_1d

__all__ = ["anomaly_auprc", "ood_auroc", "precision_recall"]

# --------------------------------------------------------------------------- #
# AUROC, AUPRC
# --------------------------------------------------------------------------- #


def _binary_labels(labels: ArrayLike, n: int) -> np.ndarray:
    y = _as_1d(labels, "labels")
    if y.shape[0] != n:
        raise ValueError(f"got {n} scores but {y.shape[0]} labels")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must be 0 (normal) or 1 (anomaly)")
    if y.min() == y.max():
        raise ValueError("labels must contain both classes, 0 (normal) and 1 (anomaly)")
    return y.astype(np.int64)


def ood_auroc(in_scores: ArrayLike, out_scores: ArrayLike) -> float:
    r"""Area under the ROC curve for telling out-of-distribution from in-distribution data.

    $$ \mathrm{AUROC} = P\big(s(x_{\rm out}) > s(x_{\rm in})\big)
                        + \tfrac12\, P\big(s(x_{\rm out}) = s(x_{\rm in})\big), $$

    with out-of-distribution images the positive class (label 1) and scores
    where **higher means more anomalous** (for an EBM the energy $E = -f$,
    see [`latent_ebm_scores`][kldiv.metrics.latent_ebm_scores] and
    [`marginal_ebm_scores`][kldiv.metrics.marginal_ebm_scores]). A perfect
    detector gives 1, a reversed one 0 (ALICE's "0.0" on uniform noise in
    Han et al. 2020, Table 3), a useless one 0.5. Computed by scikit-learn's
    ``roc_auc_score``.

    Arguments:
        in_scores: scores of the in-distribution test images (e.g. CIFAR-10 test), shape ``(n_in,)``.
        out_scores: scores of the OOD images (e.g. SVHN), shape ``(n_out,)``.

    Returns:
        The AUROC in $[0, 1]$.

    References:
        Han et al., *Joint Training of Variational Auto-Encoder and Latent
        Energy-Based Model*, CVPR 2020, §5.3, Table 3.
        [arXiv:2006.06059](https://arxiv.org/abs/2006.06059)

    Examples:
        >>> ood_auroc([0.1, 0.2, 0.3], [0.5, 0.25])
        0.8333333333333334
    """
    from sklearn.metrics import roc_auc_score

    s_in = _as_1d(in_scores, "in_scores")
    s_out = _as_1d(out_scores, "out_scores")
    scores = np.concatenate([s_in, s_out])
    labels = np.concatenate([np.zeros(s_in.shape[0]), np.ones(s_out.shape[0])])
    return float(roc_auc_score(labels, scores))


def _share_weights(y: np.ndarray, anomaly_share: float | None) -> np.ndarray | None:
    """Per-image weights under which the anomalies make up ``anomaly_share`` of the test set."""
    if anomaly_share is None:
        return None
    if isinstance(anomaly_share, bool) or not isinstance(anomaly_share, numbers.Real):
        raise TypeError(f"anomaly_share must be a number in (0, 1) or None, got {anomaly_share!r}")
    share = float(anomaly_share)
    if not 0 < share < 1:
        raise ValueError(f"anomaly_share must be a fraction in (0, 1), got {anomaly_share!r}")
    n_anomalies = int(y.sum())
    weight = share / (1 - share) * (y.shape[0] - n_anomalies) / n_anomalies
    return np.where(y == 1, weight, 1.0)


def precision_recall(scores: ArrayLike, labels: ArrayLike, *,
                     anomaly_share: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    r"""The precision–recall curve of anomaly scores (label 1 = anomaly, higher score = more anomalous).

    For each threshold $t$ among the scores, the detector flags $s(x) \ge t$:
    precision $= \mathrm{TP}/(\mathrm{TP} + \mathrm{FP})$, recall
    $= \mathrm{TP}/(\mathrm{TP} + \mathrm{FN})$. Computed by scikit-learn's
    ``precision_recall_curve``, which ends the curve at (recall 0, precision 1).

    Arguments:
        scores: anomaly scores, shape ``(n,)``.
        labels: 1 for an anomaly, 0 for a normal image, shape ``(n,)``.
        anomaly_share: count every anomaly with the weight that makes the
            anomalies this fraction of the test set (``None``: as they are).
            Recall does not change; precision becomes what it would be, in
            expectation, on a test set in which the anomalies were that
            common.

    Returns:
        ``(recall, precision)``, two arrays in order of decreasing recall.
    """
    from sklearn.metrics import precision_recall_curve

    s = _as_1d(scores, "scores")
    y = _binary_labels(labels, s.shape[0])
    precision, recall, _ = precision_recall_curve(y, s, sample_weight=_share_weights(y, anomaly_share))
    return recall, precision


def anomaly_auprc(scores: ArrayLike, labels: ArrayLike, *, anomaly_share: float | None = None) -> float:
    r"""Area under the precision–recall curve, by the trapezoidal rule (Zenati et al. 2018).

    $$ \mathrm{AUPRC} = \sum_k \tfrac12 (r_{k} - r_{k+1}) (p_k + p_{k+1}), $$

    over the points $(r_k, p_k)$ of the precision–recall curve
    ([`precision_recall`][kldiv.metrics.precision_recall]) in decreasing
    recall, ending at $(0, 1)$. Label 1 is an anomaly and **higher scores
    mean more anomalous**; for an EBM the score is the energy $E = -f$.

    *Which area, and why.* The MNIST hold-out-digit table of Han et al. 2020
    (Table 4) compares with numbers of MEG and BiGAN-$\sigma$ computed by the
    code of Zenati et al. (2018), which takes scikit-learn's
    ``precision_recall_curve`` and integrates it with ``auc`` (the
    trapezoidal rule). We do the same so that values are comparable with that
    table. It is not scikit-learn's ``average_precision_score``
    ($\sum_k (r_k - r_{k+1})\, p_k$, a step function), which is the more
    conservative estimate: linear interpolation between PR points can be
    optimistic, and the two differ most on small test sets.

    Protocol of the table (from the MEG code): pool the 70,000 MNIST images,
    remove one digit class, shuffle the rest with seed 42, train on 80 % of
    the normal digits; test on the remaining 20 % plus every image of the
    held-out digit, with label 1 for the held-out digit.

    *It depends on how common the anomalies are.* A score that ranks at
    random has an AUPRC near the anomalies' share of the test set, and one
    that ranks every anomaly as more normal than every normal image still
    has $1 - \ln(1 + k)/k$ with $k$ = anomalies / normal images. On that
    protocol the held-out digit is 33–39 % of the test set, so no score gets
    below 0.19–0.23 and chance is 0.33–0.39; ``anomaly_share`` gives the
    area on a test set in which the anomalies are as common as you say
    (e.g. the digit's share of MNIST, about 0.1), by weighting them.

    Arguments:
        scores: anomaly scores (energies), shape ``(n,)``.
        labels: 1 for an anomaly (the held-out digit), 0 for a normal image.
        anomaly_share: weigh the anomalies to this fraction of the test set
            (see [`precision_recall`][kldiv.metrics.precision_recall]);
            ``None``: as they are.

    Returns:
        The AUPRC in $[0, 1]$.

    References:
        Zenati et al., *Efficient GAN-Based Anomaly Detection*, ICLR workshop 2018.
        [arXiv:1802.06222](https://arxiv.org/abs/1802.06222);
        Han et al., CVPR 2020, §5.4, Table 4. [arXiv:2006.06059](https://arxiv.org/abs/2006.06059)

    Examples:
        >>> round(anomaly_auprc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]), 6)  # 19/24
        0.791667
        >>> round(anomaly_auprc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], anomaly_share=0.5), 6)  # already half
        0.791667
    """
    from sklearn.metrics import auc

    recall, precision = precision_recall(scores, labels, anomaly_share=anomaly_share)
    return float(auc(recall, precision))
