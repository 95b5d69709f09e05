"""The rows of new tokens, from choice to matrix, in four steps of one package:

- policy.py: which strategies run on which rows (a tied model's shared row, the checks of what was named);
- compute.py: the rows themselves, heuristic then learned (`new_rows`, `compute_rows`, `NewRows`);
- layout.py: where rows go in a model's matrices (tied, untied, biased, padded; the bit-exact copies);
- grow.py: writing them into a model, for good or for a `with` block (`grow_embeddings`, `grown_for`).

The package imports none of them itself (forward.py needs layout.py without the learning code behind
compute.py): import from the module, e.g. `from vocab_expand.rows.compute import new_rows`.

Left out: the strategies' maths (strategies/); the tokenizer (tokenization.py); the report (report.py).
"""
