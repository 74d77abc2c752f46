"""Derivatives at the edge of the domain: 0·∞ = 0 in tangents, ±∞ where the limit is infinite.

An elementwise loss such as u·softplus(x) or p·log q has partial derivatives
that are infinite at some arguments (∂/∂u = softplus(x) = +∞ at x = +∞). The
chain rule then multiplies ∞ by tangents and cotangents that are often 0 (an
unperturbed argument, the other rows of a Jacobian), and IEEE gives NaN. Here a
coefficient c that may be ±∞ is applied to a tangent t as (t·a)·b with finite
a, b and a·b = c: linear in t, so reverse mode transposes it, 0 for t = 0, and
±∞ for |t| above 1/b (about 5e-20 in float32). Every function here works
under jit, vmap, and both autodiff modes.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

# A tangent handed to a ``custom_jvp`` rule defined with ``symbolic_zeros=True``.
Tangent = jax.Array | SymbolicZero


def tangent_sum(out: jax.Array, terms: Sequence[tuple[Tangent, Callable[[jax.Array], jax.Array]]]) -> jax.Array:
  """Σ term(tangent) over the terms whose tangent is not a symbolic zero (0 of ``out``'s shape if none is).

  Rules defined with ``symbolic_zeros=True`` use it so that an argument that is
  not differentiated (labels, a default weight) costs nothing.
  """
  kept = [term(tangent) for tangent, term in terms if not isinstance(tangent, SymbolicZero)]
  return sum(kept[1:], kept[0]) if kept else jnp.zeros_like(out)


def _factors(c: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Finite (a, b) with a·b = c: (c, 1) where c is finite, (±max, √max) where it is ±∞."""
  big = jnp.finfo(c.dtype).max
  infinite = jnp.isinf(c)
  return jnp.where(infinite, jnp.copysign(big, c), c), jnp.where(infinite, math.sqrt(big), 1).astype(c.dtype)


def scale(c: jax.Array, t: jax.Array) -> jax.Array:
  """c·t with 0·(±∞) = 0, linear in the tangent t."""
  a, b = _factors(c)
  return (t * a) * b


def ratio(u: jax.Array, v: jax.Array) -> jax.Array:
  """u / v with 0/0 = 0 and u/0 = ±∞, without a division by zero (checkify stays quiet)."""
  zero = v == 0
  return jnp.where(zero, jnp.where(u == 0, 0, jnp.copysign(jnp.inf, u)), u / jnp.where(zero, 1, v))


def xsoftplus(u: jax.Array, x: jax.Array) -> jax.Array:
  """u·softplus(x) with 0·∞ = 0 (a value only: not for differentiation)."""
  return jnp.where(u == 0, 0, u * jax.nn.softplus(x))


@jax.custom_jvp
def _softplus_factors(x: jax.Array, u: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``_factors`` of u·softplus(x), differentiable to every order through ``softplus_product``."""
  return _factors(xsoftplus(u, x))


def _softplus_factors_jvp(
  primals: tuple[jax.Array, jax.Array], tangents: tuple[Tangent, Tangent]
) -> tuple[tuple[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]:
  x, u = primals
  dx, du = tangents
  a, b = _softplus_factors(x, u)
  # d(a·b) = u σ(x) dx + softplus(x) du, carried by a alone (b is piecewise constant).
  da = tangent_sum(
    a, [(dx, lambda dx: u * jax.nn.sigmoid(x) / b * dx), (du, lambda du: softplus_product(x, 1 / b, du))]
  )
  return (a, b), (da, jnp.zeros_like(b))


_softplus_factors.defjvp(_softplus_factors_jvp, symbolic_zeros=True)


@jax.custom_jvp
def softplus_product(x: jax.Array, u: jax.Array, t: jax.Array) -> jax.Array:
  r"""u·softplus(x)·t with 0·∞ = 0, linear in t, with exact derivatives of every order.

  .. math::
    d\,[u\,\mathrm{softplus}(x)\,t] = u\,t\,\sigma(x)\,dx + \mathrm{softplus}(x)\,t\,du
      + u\,\mathrm{softplus}(x)\,dt

  The factors σ(x), u and t are finite, so only softplus(x) can be infinite,
  and every term that carries it is again a ``softplus_product``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from xent_jax import _limits
    >>> jnp.set_printoptions(precision=4)
    >>> a, b, z = jnp.array([jnp.inf, jnp.inf, 0.0]), jnp.array([1.0, 0.0, 2.0]), jnp.array([-1.0, 1.0, 1.0])
    >>> print(_limits.softplus_product(a, b, z))
    [  -inf 0.     1.3863]
  """
  a, b = _softplus_factors(x, u)
  return (t * a) * b


def _softplus_product_jvp(
  primals: tuple[jax.Array, jax.Array, jax.Array], tangents: tuple[Tangent, Tangent, Tangent]
) -> tuple[jax.Array, jax.Array]:
  x, u, t = primals
  dx, du, dt = tangents
  out = softplus_product(x, u, t)
  return out, tangent_sum(
    out,
    [
      (dx, lambda dx: u * t * jax.nn.sigmoid(x) * dx),
      (du, lambda du: softplus_product(x, t, du)),
      (dt, lambda dt: softplus_product(x, u, dt)),
    ],
  )


softplus_product.defjvp(_softplus_product_jvp, symbolic_zeros=True)


def elementwise(
  value: Callable[..., jax.Array], partials: Callable[..., Sequence[jax.Array]]
) -> Callable[..., jax.Array]:
  """An elementwise function whose tangent is Σ_i scale(∂_i, t_i), the partials given in closed form.

  First derivatives are the closed forms, ±∞ included, in both modes and in
  every Jacobian; higher derivatives differentiate ``partials`` (exact where
  the partials are finite and smooth).
  """
  f = jax.custom_jvp(value)

  def jvp(primals: tuple[jax.Array, ...], tangents: tuple[Tangent, ...]) -> tuple[jax.Array, jax.Array]:
    out = f(*primals)
    return out, tangent_sum(
      out, [(t, functools.partial(scale, g)) for g, t in zip(partials(*primals), tangents, strict=True)]
    )

  f.defjvp(jvp, symbolic_zeros=True)
  return f


def _product(u: jax.Array, v: jax.Array) -> jax.Array:
  """u·v with 0·v = 0 for every v, ∞ included; ∂/∂u = v and ∂/∂v = u, ±∞ kept."""
  return jnp.where(u == 0, 0, u * v)


product = elementwise(_product, lambda u, v: (v, u))
