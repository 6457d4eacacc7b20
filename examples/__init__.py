"""The example services (one package each: service, control plane, scenario, demo, tests).

A package of the distribution, so ``examples.<name>`` imports from any working directory:
the demo (:mod:`pcdemo`) registers their scenarios, and the examples start their own helper
processes as ``python -m examples.<name>.<module>``.
"""
