"""Config classes of the built-in stream filters, one module each, imported the first time a
configuration names the filter (``_BUILTIN_CLASSES`` in ``filter_configs``): a file still
validates without the runtime."""
