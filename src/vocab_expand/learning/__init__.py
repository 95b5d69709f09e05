"""What data-driven strategies learn from: the domain-text sample, its hidden states and occurrence windows
(context.py), built on demand by the orchestration (orchestrate.py), which runs every data-driven strategy
of an expansion without naming any.

This package imports nothing on purpose: strategies import its modules, and its modules import strategies,
so an import here would make a cycle.

Left out: the strategies themselves (strategies/), writing rows (rows/).
"""
