"""Sphinx configuration for the skhds documentation (numpydoc + sphinx-gallery).

Build (warnings are errors)::

    pip install -e ".[doc]"
    python -m sphinx -W --keep-going -b html doc doc/_build/html

``SKHDS_DOC_EXAMPLES`` is a regular expression choosing which gallery examples
are executed (default: all); CI executes a fast subset, the others are rendered
without their output.
"""

import os

import matplotlib

matplotlib.use("Agg")

project = "skhds"
author = "The skhds developers"
copyright = "2026, The skhds developers"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
]
autosummary_generate = True
templates_path = ["_templates"]
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
# Docstrings of the public API are validated by tests/test_docstrings.py (numpydoc's
# validator, same rules); the build itself does not re-validate, because autodoc
# also renders methods inherited from torch.nn.Module, whose docstrings are torch's.
numpydoc_validation_checks = set()
sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": os.environ.get("SKHDS_DOC_EXAMPLES", "plot_"),
    "download_all_examples": False,
    "plot_gallery": "True",
    "abort_on_example_error": True,
}
html_theme = "alabaster"
exclude_patterns = ["_build"]
