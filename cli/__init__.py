"""The ``halo`` command line (``cli.main``): flags in, the library's config objects out."""
