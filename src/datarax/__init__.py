"""datarax-metadata: per-record metadata for JAX data pipelines, resumable with Orbax."""

__version__ = "0.1.0"
