"""Command-line entry points: `realm-jax train / eval / generate / data / bench / sweep`."""
