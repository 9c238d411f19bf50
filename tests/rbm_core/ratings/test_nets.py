"""The softmax RBM on sparse rating cases against exact enumeration (float64, tiny sizes)."""

import itertools

import pytest
import torch

from rbm_core.ratings.nets import CaseBatch, CaseStore, SoftmaxRBMNet

K = 5


def make_net(num_units=3, num_hidden=3, conditional=False, seed=0, shared=True, ordinal=False):
    g = torch.Generator().manual_seed(seed)
    net = SoftmaxRBMNet(num_units, K, num_hidden, conditional, dtype=torch.float64, generator=g, shared=shared,
                        ordinal=ordinal)
    with torch.no_grad():
        net.weight.copy_(torch.randn(net.weight.shape, generator=g, dtype=torch.float64))
        net.visible_bias.copy_(torch.randn(net.visible_bias.shape, generator=g, dtype=torch.float64))
        net.hidden_bias.copy_(torch.randn(net.hidden_bias.shape, generator=g, dtype=torch.float64))
        if shared:
            net.shared_weight.copy_(torch.randn(net.shared_weight.shape, generator=g, dtype=torch.float64))
        if conditional:
            net.conditional_weight.copy_(torch.randn(net.conditional_weight.shape, generator=g, dtype=torch.float64))
    return net


def case(observed: dict[int, int], rated: set[int] | None = None) -> CaseBatch:
    units = torch.tensor(sorted(observed), dtype=torch.long)
    ratings = torch.tensor([observed[u] for u in sorted(observed)], dtype=torch.long)
    zeros = torch.zeros(len(units), dtype=torch.long)
    rated_case = rated_unit = None
    if rated is not None:
        rated_unit = torch.tensor(sorted(rated), dtype=torch.long)
        rated_case = torch.zeros(len(rated_unit), dtype=torch.long)
    return CaseBatch(1, zeros, units, ratings, torch.zeros(1, dtype=torch.long), rated_case, rated_unit)


def exact_energy(net, observed: dict[int, int], h: torch.Tensor, rated: set[int] | None) -> torch.Tensor:
    """E(v, h; r) summed term by term over the observed units only."""
    e = -(net.hidden_bias * h).sum()
    w = net.weight
    if net.ordinal:  # the parameter holds increments: W_ik = V_i1 + ... + V_ik
        w = torch.stack([net.weight[:, : k + 1].sum(1) for k in range(K)], 1)
    w = w + (net.shared_weight if net.shared else 0.0)  # W_ik + S_k, written out
    for unit, rating in observed.items():
        e = e - net.visible_bias[unit, rating - 1] - (w[unit, rating - 1] * h).sum()
    if rated is not None:
        for unit in rated:
            e = e - (net.conditional_weight[unit] * h).sum()
    return e


def exact_free_energy(net, observed, rated=None):
    hs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=net.num_hidden)), dtype=torch.float64)
    energies = torch.stack([exact_energy(net, observed, h, rated) for h in hs])
    return -torch.logsumexp(-energies, 0)


@pytest.mark.parametrize("shared,ordinal", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("conditional", [False, True])
@pytest.mark.parametrize("observed", [{0: 3}, {0: 1, 2: 5}, {0: 2, 1: 4, 2: 3}, {}])
def test_free_energy_with_mask_matches_enumeration(conditional, observed, shared, ordinal):
    net = make_net(conditional=conditional, shared=shared, ordinal=ordinal)
    rated = (set(observed) | {1}) if conditional else None
    got = net.free_energy(case(observed, rated))[0]
    assert torch.allclose(got, exact_free_energy(net, observed, rated), atol=1e-10)


@pytest.mark.parametrize("ordinal", [False, True])
@pytest.mark.parametrize("conditional", [False, True])
def test_exact_predictive_matches_ratio_of_joint_over_enumeration(conditional, ordinal):
    """p(v_q = k | observed others) = Σ_h exp(-E(v_obs ∪ {q=k}, h)) normalised over k, with the
    missing third unit summed out of nothing (it takes no part); for the conditional RBM r_q = 1."""
    net = make_net(conditional=conditional, ordinal=ordinal)
    observed = {0: 4}
    rated = {0} if conditional else None
    batch = case(observed, rated)
    for query in (1, 2):
        logits = net.query_logits(batch, torch.tensor([0]), torch.tensor([query]), exact=True)
        got = torch.softmax(logits, -1)[0]
        joint_rated = None if rated is None else rated | {query}
        log_joint = torch.stack([-exact_free_energy(net, {**observed, query: k}, joint_rated) for k in range(1, K + 1)])
        assert torch.allclose(got, torch.softmax(log_joint, 0), atol=1e-10)


def test_predictive_of_an_observed_unit_conditions_on_the_others_only():
    net = make_net()
    batch = case({0: 4, 1: 2})
    got = torch.softmax(net.query_logits(batch, torch.tensor([0]), torch.tensor([1])), -1)[0]
    log_joint = torch.stack([-exact_free_energy(net, {0: 4, 1: k}) for k in range(1, K + 1)])
    assert torch.allclose(got, torch.softmax(log_joint, 0), atol=1e-10)


def test_mean_field_prediction_is_one_step_reconstruction():
    net = make_net()
    batch = case({0: 4, 2: 1})
    got = net.query_logits(batch, torch.tensor([0]), torch.tensor([1]), exact=False)[0]
    w = net.weight + net.shared_weight
    x = net.hidden_bias + w[0, 3] + w[2, 0]
    assert torch.allclose(got, net.visible_bias[1] + w[1] @ torch.sigmoid(x), atol=1e-12)


@pytest.mark.parametrize("shared,ordinal", [(False, False), (True, False), (True, True), (False, True)])
@pytest.mark.parametrize("conditional", [False, True])
def test_cd_gradient_equals_autograd_and_layouts_agree(conditional, shared, ordinal):
    """Both layouts draw the same chain and write the autograd gradient of
    mean F(data) - mean F(negative samples) (hidden means at both ends)."""
    torch.manual_seed(0)
    num_units, cases = 6, 4
    data_case = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
    data_unit = torch.tensor([0, 2, 5, 1, 2, 0, 1, 3, 4, 5])
    data_rating = torch.tensor([1, 5, 3, 2, 2, 4, 5, 1, 3, 3])
    rated = (torch.cat([data_case, torch.tensor([0, 3])]), torch.cat([data_unit, torch.tensor([1, 0])])) if conditional else None
    store = CaseStore(cases, data_case, data_unit, data_rating, rated)
    batch = store.batch(torch.arange(cases))
    grads = {}
    for layout in ("sparse", "dense"):
        net = make_net(num_units, 4, conditional, seed=3, shared=shared, ordinal=ordinal)
        stats = net.cd_gradients(batch, 3, torch.Generator().manual_seed(7), layout)
        grads[layout] = ({n: p.grad.clone() for n, p in net.named_parameters()}, stats["negative_rating"])
        negative = CaseBatch(batch.size, batch.case, batch.unit, stats["negative_rating"], batch.offsets,
                             batch.rated_case, batch.rated_unit)
        for p in net.parameters():
            p.grad = None
        loss = net.free_energy(batch).mean() - net.free_energy(negative).mean()
        loss.backward()
        per_case = len(batch.rating) / batch.size  # the shared weight's gradient is scaled (documented)
        for name, p in net.named_parameters():
            expected = p.grad / per_case if name == "shared_weight" else p.grad
            assert torch.allclose(grads[layout][0][name], expected, atol=1e-10), (layout, name)
    assert torch.equal(grads["sparse"][1], grads["dense"][1])


def _store_batch(conditional: bool):
    data_case = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    data_unit = torch.tensor([0, 2, 4, 1, 2, 0, 1, 3, 4])
    data_rating = torch.tensor([1, 5, 3, 2, 2, 4, 5, 1, 3])
    rated = (torch.cat([data_case, torch.tensor([0, 1])]), torch.cat([data_unit, torch.tensor([1, 0])])) if conditional else None
    return CaseStore(3, data_case, data_unit, data_rating, rated).batch(torch.arange(3))


@pytest.mark.parametrize("conditional", [False, True])
def test_leave_one_out_logits_are_the_exact_predictive_of_each_observed_unit(conditional):
    """The pseudo-likelihood's terms: each observed rating's conditional given the case's other
    ratings, as ``query_logits`` (itself checked against enumeration above) and enumeration give it."""
    net = make_net(5, 3, conditional, seed=2)
    batch = _store_batch(conditional)
    logits, target = net.leave_one_out_logits(batch)
    expected = net.query_logits(batch, batch.case, batch.unit, exact=True)
    assert torch.equal(target, batch.rating - 1)
    assert torch.allclose(torch.log_softmax(logits, -1), torch.log_softmax(expected, -1), atol=1e-10)
    if not conditional:  # case 1 = {1: 2, 2: 2}: unit 1 given unit 2, by enumeration
        log_joint = torch.stack([-exact_free_energy(net, {1: k, 2: 2}) for k in range(1, K + 1)])
        assert torch.allclose(torch.log_softmax(logits[3], -1), torch.log_softmax(log_joint, 0), atol=1e-10)


@pytest.mark.parametrize("conditional", [False, True])
def test_leave_one_out_logits_with_dropped_entries_condition_on_the_kept_ones(conditional):
    """Pseudo-likelihood with input dropout: each target's exact conditional given the kept
    entries only, i.e. ``query_logits`` on the case without the dropped entries (a dropped target
    is then an unobserved unit, a kept one leaves its own term out)."""
    net = make_net(5, 3, conditional, seed=3)
    batch = _store_batch(conditional)
    keep = torch.tensor([True, False, True, True, True, True, False, True, False])
    select = torch.tensor([True, True, False, True, True, True, True, False, True])
    logits, target = net.leave_one_out_logits(batch, select, keep)
    kept = CaseBatch(batch.size, batch.case[keep], batch.unit[keep], batch.rating[keep],
                     torch.tensor([0, 2, 4]), batch.rated_case, batch.rated_unit)
    expected = net.query_logits(kept, batch.case[select], batch.unit[select], exact=True)
    assert torch.equal(target, batch.rating[select] - 1)
    assert torch.allclose(torch.log_softmax(logits, -1), torch.log_softmax(expected, -1), atol=1e-10)
    if not conditional:  # case 2 keeps {0: 4, 3: 1}: its dropped unit 1 given those, by enumeration
        log_joint = torch.stack([-exact_free_energy(net, {0: 4, 1: k, 3: 1}) for k in range(1, K + 1)])
        row = int(torch.nonzero(select)[:, 0].tolist().index(6))
        assert torch.allclose(torch.log_softmax(logits[row], -1), torch.log_softmax(log_joint, 0), atol=1e-10)


def test_fused_softplus_rows_equal_the_plain_autograd_graph():
    """``_SoftplusRows`` (used by ``leave_one_out_logits``) against autograd of the plain formula."""
    from torch.nn import functional as F

    from rbm_core.ratings.nets import _SoftplusRows

    g = torch.Generator().manual_seed(4)
    weight = torch.randn(6, K, 3, generator=g, dtype=torch.float64, requires_grad=True)
    base = torch.randn(9, 3, generator=g, dtype=torch.float64, requires_grad=True)
    unit = torch.tensor([0, 5, 2, 2, 1, 0, 4, 2, 3])
    out_grad = torch.randn(9, K, generator=g, dtype=torch.float64)
    fused = _SoftplusRows.apply(base, weight, unit)
    fused_grads = torch.autograd.grad(fused, (base, weight), out_grad)
    plain = F.softplus(base.unsqueeze(1) + weight[unit]).sum(-1)
    plain_grads = torch.autograd.grad(plain, (base, weight), out_grad)
    assert torch.allclose(fused, plain, atol=1e-12)
    for a, b in zip(fused_grads, plain_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-12)
    assert torch.autograd.gradcheck(lambda b, w: _SoftplusRows.apply(b, w, unit), (base, weight))


def test_case_store_batches_rows_in_order():
    store = CaseStore(3, torch.tensor([2, 0, 2, 1]), torch.tensor([1, 0, 0, 3]), torch.tensor([5, 4, 3, 2]))
    batch = store.batch(torch.tensor([2, 1]))
    assert batch.case.tolist() == [0, 0, 1]
    assert batch.unit.tolist() == [0, 1, 3]
    assert batch.rating.tolist() == [3, 5, 2]
    assert batch.offsets.tolist() == [0, 2]
