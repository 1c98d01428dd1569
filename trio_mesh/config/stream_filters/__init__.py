"""Config classes of the built-in stream filters, one module each. Each registers its class by
type name when imported, which ``filter_configs`` does the first time a configuration names
the filter (``_BUILTIN_MODULES``): a file still validates without the runtime."""
