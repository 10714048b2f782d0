"""Config templates (``string.Template``) for the private service instances of ``o2base.services``.

A package of its own so that ``[tool.setuptools.package-data] "*" = ["*.tmpl"]`` ships these
files in a wheel too (that glob only matches files beside a package's ``__init__.py``).
"""
