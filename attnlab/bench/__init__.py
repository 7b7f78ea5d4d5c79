"""Benchmarks: ``python -m attnlab.bench {core,attention,mechanisms} ...``; JSON under results/."""
