"""The NASNet model: layers, the op table, genotypes, cells, the network plan, networks, the registry."""
