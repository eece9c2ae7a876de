"""The unit tier (a package, so its module names never clash with the integration tests')."""
