"""Plausible wrong solutions ("mutants") of A1 and A2 that the assignments' tests must catch.

Each mutant is a list of ``(correct, wrong)`` text replacements in the solution cells of
an assignment's source notebook: the mistakes students make in the ELBO. The tests
(``tests/test_assignments.py``) grade every mutant and require at least one failed test;
for A2 the validation threshold itself must catch them, and
``benchmarks/assignment_a2_threshold.py`` measures by how much, over several seeds.
"""

from __future__ import annotations

import copy

MUTANTS = {
    "a1_elbo": {
        "mean-reduced likelihood": [
            ("(x * logits - F.softplus(logits)).sum(dim=(1, 2, 3))",
             "(x * logits - F.softplus(logits)).mean(dim=(1, 2, 3))"),
        ],
        "sign error in the KL": [
            ("(mu.square() + logvar.exp() - 1 - logvar)", "(mu.square() + logvar.exp() - 1 + logvar)"),
        ],
        "missing KL": [
            ("return log_likelihood(model.decode(z), x) - gaussian_kl(mu, logvar)",
             "return log_likelihood(model.decode(z), x)"),
        ],
    },
    "a2_conv_vae": {
        "mean-reduced likelihood": [
            ("(x * logits - F.softplus(logits)).sum(dim=(1, 2, 3))",
             "(x * logits - F.softplus(logits)).mean(dim=(1, 2, 3))"),
        ],
        "sign error in the KL": [
            ("(mu.square() + logvar.exp() - 1 - logvar)", "(mu.square() + logvar.exp() - 1 + logvar)"),
        ],
        "missing KL": [("return (kl - log_px_z).mean()", "return (-log_px_z).mean()")],
        "sigma = exp(logvar)": [("mu + torch.exp(0.5 * logvar) * torch.randn", "mu + torch.exp(logvar) * torch.randn")],
    },
}


def mutate(nb: dict, replacements: list[tuple[str, str]]) -> dict:
    """A copy of the notebook ``nb`` (nbformat JSON as a dict) with each replacement made
    in its solution cells, where each correct text must occur exactly once."""
    nb = copy.deepcopy(nb)
    solutions = [c for c in nb["cells"] if c.get("metadata", {}).get("nbgrader", {}).get("solution")]
    for correct, wrong in replacements:
        hits = [c for c in solutions if correct in "".join(c["source"])]
        count = sum("".join(c["source"]).count(correct) for c in hits)
        if count != 1:
            raise ValueError(f"the solution text {correct!r} occurs {count} times, expected once: update MUTANTS")
        cell = hits[0]
        cell["source"] = "".join(cell["source"]).replace(correct, wrong)
    return nb
