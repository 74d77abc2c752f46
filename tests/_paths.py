"""The fused kernels' paths, for tests that run on more than one.

Below ``xent_jax._fused._SMALL_SIZE`` logits the kernels take a few-pass path
(the max shift, selects, no conds), which most test shapes are; ``large_path``
sends every shape through the path of large inputs (the label shift, the
plain sums and their conds) instead, and ``max_first_path`` through that path
with the integer kernel's differentiated forward shifting first by the row
max, as it does from 2¹⁵ logits up to 16 MiB of them. The path is chosen
when a function is traced, so the caches are cleared on the way in and out.
"""

import contextlib
from collections.abc import Iterator

import jax

from xent_jax import _fused


@contextlib.contextmanager
def _sizes(small: int, label_shift_bytes: int) -> Iterator[None]:
  before = _fused._SMALL_SIZE, _fused._LABEL_SHIFT_BYTES
  _fused._SMALL_SIZE, _fused._LABEL_SHIFT_BYTES = small, label_shift_bytes
  jax.clear_caches()
  try:
    yield
  finally:
    _fused._SMALL_SIZE, _fused._LABEL_SHIFT_BYTES = before
    jax.clear_caches()


def large_path() -> contextlib.AbstractContextManager[None]:
  """Every shape on the path of large inputs, the integer kernel's shift first by the label's logit."""
  return _sizes(0, 0)


def max_first_path() -> contextlib.AbstractContextManager[None]:
  """Every shape on the path of large inputs, the differentiated integer forward's shift first by
  the row max (``_fused._first_shift``: its choice below 16 MiB of logits)."""
  return _sizes(0, 2**62)


def few_pass_path() -> contextlib.AbstractContextManager[None]:
  """Every shape on the few-pass path."""
  return _sizes(2**62, _fused._LABEL_SHIFT_BYTES)


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
