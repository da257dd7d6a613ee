"""Synthetic data sets the demo models are trained on (not part of the library).

Deterministic generators: the same arguments always give the same bytes, so the
shipped models in models/ and the samples in jobs/sample/ can be rebuilt exactly
(see jobs/make_demo_data.py).
"""
