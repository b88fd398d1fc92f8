"""Scripts the integration tests run as child processes, and what they share with the tests."""
