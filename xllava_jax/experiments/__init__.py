"""The papers' claims in miniature: suites of arms trained with seeds on a synthetic world, with
intervals, a report and plots. `python -m xllava_jax.experiments run --suite NAME --out DIR`."""
