"""Side-by-side benchmarks of datarax-metadata against the baselines its issues name."""
