"""The fused kernels' two paths, for tests that run on both.

Below ``xent_jax._fused._SMALL_SIZE`` logits the kernels take a few-pass path
(the max shift, selects, no conds), which most test shapes are; ``large_path``
sends every shape through the path of large inputs (the label shift, the
plain sums and their conds) instead. The path is chosen when a function is
traced, so the caches are cleared on the way in and out.
"""

import contextlib
from collections.abc import Iterator

import jax

from xent_jax import _fused


@contextlib.contextmanager
def _small_size(size: int) -> Iterator[None]:
  before = _fused._SMALL_SIZE
  _fused._SMALL_SIZE = size
  jax.clear_caches()
  try:
    yield
  finally:
    _fused._SMALL_SIZE = before
    jax.clear_caches()


def large_path() -> contextlib.AbstractContextManager[None]:
  """Every shape on the path of large inputs."""
  return _small_size(0)


def few_pass_path() -> contextlib.AbstractContextManager[None]:
  """Every shape on the few-pass path."""
  return _small_size(2**62)


class LargePath:
  """A unittest mixin: the class's tests run on the large-input path (``large_path``)."""

  _path: contextlib.ExitStack

  @classmethod
  def setUpClass(cls) -> None:
    super().setUpClass()  # type: ignore[misc]
    cls._path = contextlib.ExitStack()
    cls._path.enter_context(large_path())

  @classmethod
  def tearDownClass(cls) -> None:
    cls._path.close()
    super().tearDownClass()  # type: ignore[misc]
