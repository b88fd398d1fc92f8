"""Shared test settings: a hypothesis profile sized for two CPU cores."""

from hypothesis import HealthCheck, settings

settings.register_profile(
    "datarax",
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("datarax")
