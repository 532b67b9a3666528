"""Examples, routes, verification and grain pipelines."""
