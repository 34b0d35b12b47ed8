"""Stability of the important neurons and honest neuron correspondence (issue 11, points 3 and 4).

References: a hand-worked bootstrap, the public ``top_k_neurons`` applied to each resample (a literal
loop), planted truths (a stable planted top-k; a target that copies a permuted source with dead
neurons), the analytic chance level of the inherited share for independent models, and planted
class- and model-specific conductance run through ``diagnose_pair``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers.models import tiny_net

from mlflow_transfer.diagnostics import engine
from mlflow_transfer.diagnostics.conductance import layer_conductance
from mlflow_transfer.diagnostics.engine import DiagnoseOptions, Instances, diagnose_pair
from mlflow_transfer.diagnostics.ranking import resolve_k, top_k_neurons
from mlflow_transfer.diagnostics.similarity import (
    NO_MATCH,
    best_source_neurons,
    layer_summary,
    neuron_similarity,
    silent_neurons,
    weight_correspondence,
)
from mlflow_transfer.diagnostics.stability import (
    MIN_INSTANCES,
    bootstrap_jaccard,
    important_set_stability,
)
from mlflow_transfer.diagnostics.weights import extract_important_weights
from mlflow_transfer.errors import DiagnosticsError

pytestmark = pytest.mark.usefixtures("one_thread")


def _jaccard(a, b) -> float:
    a, b = set(map(int, a)), set(map(int, b))
    return len(a & b) / len(a | b)


# ---------------------------------------------------------------------------------------------------
# Stability of the important set
# ---------------------------------------------------------------------------------------------------

def test_bootstrap_jaccard_hand_worked():
    # Row ranks: [4,3,2,1], [1,4,3,2], [1,2,4,3]; full rank sums [6,9,9,6] -> top-2 {1, 2}.
    x = np.array([[4.0, 3.0, 2.0, 1.0], [1.0, 4.0, 3.0, 2.0], [1.0, 2.0, 4.0, 3.0]])
    resamples = np.array([
        [0, 0, 0],  # sums [12, 9, 6, 3]  -> {0, 1}: J = 1/3
        [1, 1, 2],  # sums [3, 10, 10, 7] -> {1, 2}: J = 1
        [0, 1, 2],  # the sample itself    -> J = 1
        [0, 0, 2],  # sums [9, 8, 8, 5]   -> {0, 1} (8 ties: lower index first): J = 1/3
    ])
    assert bootstrap_jaccard(x, 2, resamples) == pytest.approx(2 / 3, abs=1e-15)


def test_bootstrap_jaccard_matches_top_k_neurons_on_each_resample():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(9, 30))
    x[:, 3] += 1.0  # some signal so that the sets are neither all equal nor all different
    resamples = rng.integers(0, 9, size=(15, 9))
    full = top_k_neurons(x, k=5)
    literal = np.mean([_jaccard(top_k_neurons(x[r], k=5), full) for r in resamples])
    assert bootstrap_jaccard(x, 5, resamples) == pytest.approx(literal, abs=1e-15)


def test_a_planted_stable_top_k_has_stability_one():
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 1, size=(20, 50))
    planted = [4, 17, 30, 41, 49]
    x[:, planted] += 10.0  # the largest on every instance: every resample ranks them first
    result = important_set_stability(x, 5, n_resamples=30, seed=3)
    assert result.stability == 1.0
    assert (result.k, result.n_instances, result.n_resamples, result.reason) == (5, 20, 30, "")


def test_noise_is_unstable_and_stays_so_while_a_weak_signal_stabilises_with_more_instances():
    rng = np.random.default_rng(4)
    u, k = 100, 10
    chance = k / (2 * u - k)  # expected Jaccard of two random k-sets (approximately)
    noise = [important_set_stability(rng.normal(size=(m, u)), k, seed=5).stability for m in (10, 40, 160)]
    assert all(chance < s < 0.5 for s in noise), noise
    signal = np.zeros(u)
    signal[:k] = 0.5  # a weak, real preference for the first k neurons
    weak = [important_set_stability(rng.normal(size=(m, u)) + signal, k, seed=5).stability
            for m in (10, 40, 160)]
    assert weak[0] < weak[1] < weak[2] and weak[2] > 0.8, weak


def test_stability_is_seeded():
    x = np.random.default_rng(6).normal(size=(12, 20))
    a, b = important_set_stability(x, 3, seed=7), important_set_stability(x, 3, seed=7)
    assert a == b
    assert important_set_stability(x, 3, seed=8).stability != a.stability


@pytest.mark.parametrize("m", [0, 1, MIN_INSTANCES - 1])
def test_too_few_instances_is_not_computed_with_the_reason(m):
    result = important_set_stability(np.ones((m, 6)), 2)
    assert math.isnan(result.stability) and result.n_resamples == 0 and result.n_instances == m
    assert result.reason == (f"only {m} analysed instance(s); the bootstrap needs at least {MIN_INSTANCES} "
                             "(raise the analysis cap)")
    assert not math.isnan(important_set_stability(np.random.default_rng(0).normal(size=(MIN_INSTANCES, 6)),
                                                  2).stability)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"n_resamples": 9}, r"Expected n_resamples .*got 9\."),
    ({"k": 7}, r"Expected k as an integer in \[1, 6\] \(the layer has 6 neurons\); got 7\."),
    ({"k": 0}, r"Expected k .*got 0"),
])
def test_stability_rejects_bad_arguments(kwargs, match):
    args = {"k": 2, **kwargs}
    with pytest.raises(DiagnosticsError, match=match):
        important_set_stability(np.ones((6, 6)), **args)


def test_stability_rejects_non_finite_conductance():
    with pytest.raises(DiagnosticsError, match="finite values"):
        important_set_stability(np.full((6, 3), np.nan), 1)


# ---------------------------------------------------------------------------------------------------
# Silent neurons and the correspondence rules
# ---------------------------------------------------------------------------------------------------

def test_silent_neurons_hand_worked():
    x = np.array([[2.0, 0.0, 1e-7, -3e-6, 0.0],
                  [-4.0, 0.0, -1e-7, 0.0, 0.0]])
    # peak 4: silent when max |c| <= 4e-6 -> columns 1, 2 and 3 (3e-6); the negative column 0 is not
    np.testing.assert_array_equal(silent_neurons(x), [False, True, True, True, True])
    np.testing.assert_array_equal(silent_neurons(x, rtol=0.0), [False, True, False, False, True])
    np.testing.assert_array_equal(silent_neurons(np.zeros((3, 2))), [True, True])


def test_silent_neurons_reject_bad_input():
    with pytest.raises(DiagnosticsError, match="Expected rtol"):
        silent_neurons(np.ones((2, 2)), rtol=1.0)
    with pytest.raises(DiagnosticsError, match="finite"):
        silent_neurons(np.array([[np.inf]]))


def test_ties_among_non_zero_maxima_have_no_match_whatever_the_index():
    # column 0: sources 0 and 2 tie at 0.9; column 1: sources 1 and 2 tie (within rounding) at 0.7;
    # column 2: source 2 strictly best. The former rule kept the same index on a tie (target 2 -> 2
    # would still hold, target 1 -> 1 too); now a tie is ambiguous whichever index it involves.
    sim = np.array([[0.9, 0.1, 0.2],
                    [0.3, 0.7, 0.6],
                    [0.9, 0.7 + 1e-12, 0.8]])
    np.testing.assert_array_equal(best_source_neurons(sim), [NO_MATCH, NO_MATCH, 2])


def test_silent_source_neurons_are_never_candidates_and_silent_targets_never_matched():
    sim = np.array([[0.9, 0.5],
                    [0.4, 0.6]])
    np.testing.assert_array_equal(best_source_neurons(sim), [0, 1])
    np.testing.assert_array_equal(best_source_neurons(sim, silent_source=np.array([True, False])), [1, 1])
    np.testing.assert_array_equal(best_source_neurons(sim, silent_target=np.array([False, True])), [0, NO_MATCH])
    with pytest.raises(DiagnosticsError, match=r"Expected silent_source as a bool array of one flag per "
                                                r"neuron \(2\); got 3"):
        best_source_neurons(sim, silent_source=np.zeros(3, bool))
    with pytest.raises(DiagnosticsError, match="silent_target"):
        best_source_neurons(sim, silent_target=np.zeros(2))


def _planted_permutation_layer(rng, m, u, dead):
    """Source conductance (m, u) with distinct positive columns; a target whose neuron j copies source
    neuron pi(j) (scaled), except the ``dead`` neurons, which never conduct: the source neurons they
    copy, pi(dead), are dead too."""
    source = rng.uniform(0.1, 1.0, size=(m, u))
    pi = rng.permutation(u)
    source[:, pi[dead]] = 0.0
    target = source[:, pi] * rng.uniform(0.5, 2.0, size=u)
    target[:, dead] = 0.0
    return source, target, pi


def test_a_permuted_copy_with_dead_neurons_recovers_pi_and_the_planted_inherited_share():
    rng = np.random.default_rng(11)
    m, u1, u2 = 12, 10, 8
    dead1, dead2 = np.array([2, 7]), np.array([5])
    s1, t1, pi1 = _planted_permutation_layer(rng, m, u1, dead1)
    s2, t2, pi2 = _planted_permutation_layer(rng, m, u2, dead2)
    sim1, sim2 = neuron_similarity(s1, t1), neuron_similarity(s2, t2)
    silent1 = (silent_neurons(s1), silent_neurons(t1))
    silent2 = (silent_neurons(s2), silent_neurons(t2))
    expected1 = np.where(np.isin(np.arange(u1), dead1), NO_MATCH, pi1)
    np.testing.assert_array_equal(best_source_neurons(sim1, silent_source=silent1[0], silent_target=silent1[1]),
                                  expected1)
    # Important target weights: every link between alive neurons, plus every link touching a dead one.
    target_w = np.array([(a, b) for a in range(u1) for b in range(u2)])
    alive = ~np.isin(target_w[:, 0], dead1) & ~np.isin(target_w[:, 1], dead2)
    # The source's important weights: the images of half the alive target links (planted inherited),
    # and the same-index links (a, b) of every target link touching a dead neuron — the former
    # prefer_same_index rule matched a dead neuron to its own index and counted those as inherited.
    chosen = alive & (rng.random(len(target_w)) < 0.5)
    source_w = np.concatenate([np.stack([pi1[target_w[chosen, 0]], pi2[target_w[chosen, 1]]], 1),
                               target_w[~alive]])
    planted = set(map(tuple, source_w.tolist()))
    # an alive link inherits when its image under pi is a source weight (also a same-index one)
    expected = alive & np.array([(pi1[a], pi2[b]) in planted for a, b in target_w])
    assert expected.sum() >= chosen.sum() and (expected & ~alive).sum() == 0
    flags = weight_correspondence(target_w, source_w, sim1, sim2, silent_i=silent1, silent_next=silent2)
    np.testing.assert_array_equal(flags, expected)
    summary = layer_summary(sim1, np.arange(u1), flags)
    assert summary.n_inherited_weights == expected.sum()
    assert summary.inherited_weight_share == expected.sum() / len(target_w)
    # Without the silent masks the dead neurons have similarity 0 everywhere: still no match.
    np.testing.assert_array_equal(weight_correspondence(target_w, source_w, sim1, sim2), expected)


def test_weight_correspondence_rejects_a_mask_of_the_wrong_layer():
    sim = np.eye(3)
    with pytest.raises(DiagnosticsError, match=r"silent_next\[1\] \(target\)"):
        weight_correspondence(np.array([[0, 0]]), np.array([[0, 0]]), sim, sim,
                              silent_next=(np.zeros(3, bool), np.zeros(4, bool)))


# ---------------------------------------------------------------------------------------------------
# Independent models: inherited share near chance; a fine-tuned copy: far above
# ---------------------------------------------------------------------------------------------------

def _trained(seed: int, images: torch.Tensor, labels: torch.Tensor, steps: int = 150):
    model = tiny_net(2, seed=seed, channels=16, hidden=32, dropout=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    torch.manual_seed(seed)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        opt.step()
    return model.eval()


def _task(seed: int = 0, n: int = 64):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    images = torch.rand(n, 3, 8, 8, generator=g)
    images[labels == 1, 0] += 0.6  # class 1: a brighter red channel
    images[labels == 1, 2, :4] -= 0.4  # and a darker top of the blue channel
    return images, labels


def _inherited(source, target, images, labels, cls: int):
    """Inherited flags of the important target weights conv1 -> fc1 over the class's instances, and two
    chance levels of their share (see the test below)."""
    rows = torch.nonzero(labels == cls).flatten()
    x, y = images[rows], labels[rows]
    c = {r: layer_conductance(m, x, y, {"conv1": m.analysis_layers["conv1"], "fc1": m.analysis_layers["fc1"]},
                              n_steps=8, batch_size=64) for r, m in (("s", source), ("t", target))}
    sims = {n: neuron_similarity(c["s"][n], c["t"][n]) for n in ("conv1", "fc1")}
    silent = {n: (silent_neurons(c["s"][n]), silent_neurons(c["t"][n])) for n in ("conv1", "fc1")}
    w = {r: extract_important_weights(m, x, fraction=0.05)[("conv1", "fc1")].pairs
         for r, m in (("s", source), ("t", target))}
    flags = weight_correspondence(w["t"], w["s"], sims["conv1"], sims["fc1"],
                                  silent_i=silent["conv1"], silent_next=silent["fc1"])
    match_i = best_source_neurons(sims["conv1"], silent_source=silent["conv1"][0], silent_target=silent["conv1"][1])
    match_n = best_source_neurons(sims["fc1"], silent_source=silent["fc1"][0], silent_target=silent["fc1"][1])
    a, b = match_i[w["t"][:, 0]], match_n[w["t"][:, 1]]
    matched = (a != NO_MATCH) & (b != NO_MATCH)
    us_i, us_n = sims["conv1"].shape[0], sims["fc1"].shape[0]
    uniform = matched.mean() * len(w["s"]) / (us_i * us_n)
    p1 = np.bincount(a[matched], minlength=us_i) / max(matched.sum(), 1)
    p2 = np.bincount(b[matched], minlength=us_n) / max(matched.sum(), 1)
    marginal = matched.mean() * sum(p1[i] * p2[j] for i, j in set(map(tuple, w["s"].tolist())))
    return flags, uniform, marginal


def test_independent_models_inherit_at_chance_and_a_fine_tuned_copy_far_above():
    """Chance levels of the inherited share, for matched ends drawn independently of the source's Ks
    important weights (p_matched = share of target weights with both ends matched):

    - uniform: ends uniform over the Us_i × Us_next links: p_matched · Ks / (Us_i · Us_next) (≈ 0.05 here);
    - marginal: ends drawn independently from the distribution of matched first ends (p1) and of
      matched second ends (p2) over the target weights: p_matched · Σ_{(a, b) ∈ Ks} p1(a) p2(b).

    Both models put their important weights on a few hub channels, and each model's hubs resemble the
    other's (independently trained nets converge on similar features), so the uniform level is far
    below what two unrelated wirings give; the marginal level keeps the hubs and draws the two ends
    independently. Measured here (6 pairs): share 0.40, marginal 0.36, uniform 0.05.
    """
    images, labels = _task()
    shares, marginals, uniforms = [], [], []
    for cls in (0, 1):
        for seed in (1, 2, 3):
            flags, uniform, marginal = _inherited(_trained(10 * seed, images, labels),
                                                  _trained(10 * seed + 1, images, labels), images, labels, cls)
            shares.append(flags.mean())
            marginals.append(marginal)
            uniforms.append(uniform)
    share, marginal = float(np.mean(shares)), float(np.mean(marginals))
    assert abs(share - marginal) < 0.1, (shares, marginals)
    assert share > np.mean(uniforms)

    source = _trained(7, images, labels)
    tuned = _trained(7, images, labels, steps=0)
    tuned.load_state_dict(source.state_dict())
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(0.01 * torch.randn_like(p))
    for cls in (0, 1):
        flags, _, marginal = _inherited(source, tuned, images, labels, cls)
        assert flags.mean() >= 0.9 and flags.mean() > marginal + 0.1, (cls, flags.mean(), marginal)


# ---------------------------------------------------------------------------------------------------
# diagnose_pair reads each model's and each class's own rows
# ---------------------------------------------------------------------------------------------------

N_PER = 10  # instances per class and domain


def _planted_instances(classes: int = 2) -> Instances:
    n = classes * 2 * N_PER
    idx = np.arange(n)
    domain = (idx // (classes * N_PER)).astype(np.int8)   # first half source, second half target
    labels = (idx % classes).astype(np.int64)
    g = torch.Generator().manual_seed(0)
    return Instances(torch.rand(n, 3, 8, 8, generator=g), labels, domain, (idx % 3 == 0).astype(np.int8), idx)


def _planted_conductance(inst: Instances, source_model, target_model, widths: dict[str, int]):
    """Per model, class and layer a different important set; on the target rows of class c, target
    neuron j copies source neuron PI[c](j); in the target model, class c's source-domain rows differ
    from its target-domain rows in class c's important neurons only."""
    rng = np.random.default_rng(0)
    n = len(inst.labels)
    out = {}
    perms = {n_: {c: np.roll(np.arange(u), 1 + c) for c in (0, 1)} for n_, u in widths.items()}
    for layer, u in widths.items():
        src = rng.uniform(0.1, 1.0, size=(n, u))
        tgt = np.empty_like(src)
        for c in (0, 1):
            rows = np.flatnonzero(inst.labels == c)
            src[np.ix_(rows, IMPORTANT["source"][c][layer])] += 5.0
            tgt[rows] = src[rows][:, perms[layer][c]]
            tgt_rows = rows[inst.domain[rows] == 1]
            # the target's important set on top: scaled copies keep their cosine 1 with their source
            tgt[np.ix_(tgt_rows, IMPORTANT["target"][c][layer])] *= 100.0
        out[layer] = (src.astype(np.float32), tgt.astype(np.float32))
    return out, perms


IMPORTANT = {"source": {0: {"conv1": [0, 1], "fc1": [2, 3]}, 1: {"conv1": [2, 3], "fc1": [4, 5]}},
             "target": {0: {"conv1": [4, 5], "fc1": [6, 7]}, 1: {"conv1": [8, 9], "fc1": [10, 11]}}}
# (k = 2 for the 16-neuron layers at top_fraction 0.1)


def test_diagnose_pair_reads_each_model_and_class_its_own_rows(monkeypatch):
    widths = {"conv1": 16, "fc1": 16}
    source, target = tiny_net(2, seed=0, channels=16, hidden=16), tiny_net(2, seed=1, channels=16, hidden=16)
    inst = _planted_instances()
    planted, perms = _planted_conductance(inst, source, target, widths)

    def fake_conductance(model, images, labels, rows, layers, **kwargs):
        role = 0 if model is source else 1
        found = {n: planted[n][role].copy() if n in planted else np.random.default_rng(1).uniform(size=(len(images), 2))
                 for n in layers}
        for values in found.values():  # as the engine's: NaN on the rows it does not ask for
            values[np.setdiff1d(np.arange(len(images)), rows)] = np.nan
        return found

    monkeypatch.setattr(engine, "conductance_on", fake_conductance)
    opts = DiagnoseOptions(n_steps=2, folds=3, tsne_gradient="bh", weight_max_instances=4, patches=1,
                           top_fraction=0.1, seed=0, layers=("conv1", "fc1"))
    diag = diagnose_pair(source, target, inst, ("a", "b"), opts)
    for c, cls in enumerate(("a", "b")):
        for layer in widths:
            for role in ("source", "target"):
                assert resolve_k(widths[layer], 0.1) == 2
                assert sorted(diag.important[role][cls][layer].tolist()) == IMPORTANT[role][c][layer]
                assert diag.stability[role][cls][layer].stability == 1.0
                assert diag.stability[role][cls][layer].n_instances == N_PER
            silent = (diag.silent["source"][cls][layer], diag.silent["target"][cls][layer])
            np.testing.assert_array_equal(
                best_source_neurons(diag.similarity[cls][layer], silent_source=silent[0], silent_target=silent[1]),
                perms[layer][c])
        # the SVM separates the domains only on the target model's own neurons of this class
        assert diag.discriminability[cls].cv_mean == 1.0
        assert {ln for ln, _ in diag.discriminability_neurons[cls]} == {"conv1", "fc1"}
        assert sorted(j for ln, j in diag.discriminability_neurons[cls] if ln == "fc1") == \
            sorted(diag.important["target"][cls]["fc1"].tolist())
