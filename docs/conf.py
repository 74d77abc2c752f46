"""Sphinx configuration for the xent_jax documentation.

Build (warnings are errors, every cross-reference must resolve)::

  pip install -e '.[docs]' && sphinx-build -W --keep-going -n docs docs/_build/html

The notebooks are executed during the build (myst-nb) and the derivation
report runs beside it; see ``_ext/xent_docs.py``.
"""

import os
import pathlib
import sys
import warnings

sys.path.insert(0, str(pathlib.Path(__file__).parent / "_ext"))

import xent_jax

# sphinx-autodoc-typehints 3.6 calls an API Sphinx 10 removes; nothing here can change that.
warnings.filterwarnings("ignore", "'sphinx_autodoc_typehints._parser", module="sphinx_autodoc_typehints")

project = "xent_jax"
author = "the xent_jax authors"
copyright = "the xent_jax authors, Apache-2.0"
release = version = xent_jax.__version__

extensions = [
  "sphinx.ext.autodoc",
  "sphinx.ext.napoleon",
  "sphinx_autodoc_typehints",
  "sphinx.ext.mathjax",
  "myst_nb",
  "xent_docs",
]

exclude_patterns = ["_build", "notebooks/data"]
html_theme = "furo"
html_title = f"xent_jax {release}"
pygments_style = "sphinx"

# Google-style docstrings; types come from the annotations, shown in the parameter list.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
autodoc_member_order = "bysource"
always_use_bars_union = True
typehints_defaults = "comma"
autodoc_type_aliases = {"ArrayLike": "jax.typing.ArrayLike"}

# MyST and the notebooks.
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3
# The docs test hands over the notebooks it has executed (XENT_JAX_EXECUTED_NOTEBOOKS, see _ext/xent_docs.py);
# otherwise they execute here, cached in _build/.jupyter_cache until their code changes.
nb_execution_mode = "off" if os.environ.get("XENT_JAX_EXECUTED_NOTEBOOKS") else "cache"
nb_execution_timeout = 300
nb_execution_raise_on_error = True
nb_merge_streams = True

# No intersphinx: the build machines reach package registries only, so the inventories of Python,
# NumPy and JAX cannot be fetched. References to their types therefore have no target; they are
# listed here, and only they: a broken reference to anything of xent_jax still fails the build.
nitpick_ignore_regex = [
  ("py:class", r"(int|float|str|bool|tuple|list|dict|set|None|object|type)"),
  ("py:class", r"(collections\.abc|typing)\.\w+"),
  ("py:class", r"(jax|jnp|np|numpy|optax)(\.\w+)+"),
  ("py:class", r"(ArrayLike|Axis|Callable|Sequence|Array|dtype|Generator)"),
  ("py:class", r"jax\._src\..*"),
  ("py:data", r"Ellipsis"),  # the "..." of tuple[int, ...]
]
