"""The service layer, one package per bounded context (docs/architecture.md).

Each package's ``__init__`` is its public surface; its modules are private (``_name``). From
the top down, a package may use the ones below it, never the other way:

    pools · distribution · sim
    catalog
    fleet
    rollouts · hosts · access
    common

The import contracts in pyproject.toml (``lint-imports``, run by ``make test``) hold this.
"""
