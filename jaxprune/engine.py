"""The engine: the one update loop under every jaxprune transformation.

A method is a `Method` declaration: what it scores (`jaxprune.scores.Score`), what it selects from
and how (`jaxprune.plan.Selection`), when masks change (`jaxprune.schedules.Schedule`), how a mask
update selects (`jaxprune.rules.Rule`: prune, or drop and grow), how masks are applied
(``application``), what happens to the wrapped optimizer's statistics (``statistics``), and
optional `Hooks` for a method's own state (IMP's cycle counter, rewinding). `transformation` turns a
declaration into an ``optax.GradientTransformationExtraArgs``. Its update, in order:

1. checks the updates and the state against the params (errors name the leaf);
2. advances the score's own state, if it has one (every update);
3. installs the method's initial masks at the first update (``initial_masks``);
4. on a mask-update step (``schedule.is_update_step(count)``, one ``lax.cond``): scores, runs the
   rule, stores the new masks (packed to bits with ``packed_masks``), runs ``Hooks.on_update``;
5. edits the wrapped optimizer's statistics *before* its update (zeroes those of weights not
   training, or re-initialises the state on a mask update): XLA fuses a select on the state going
   into the update, while one on the state coming out copies every moment buffer;
6. masks the gradients and calls the wrapped optimizer, passing the extra arguments the method
   offers (``Hooks.offers``, declared by name);
7. lets the method rewrite the updates (``Hooks.updates``: rewinding), then, for persistent masks,
   projects them so that every pruned weight is exactly ``0`` after ``optax.apply_updates``.

Persistent masks (the default) zero the pruned weights. Ephemeral masks leave the weights dense;
the model applies the masks in its forward pass with `jaxprune.ephemeral.masked_params`
(straight-through gradient): the basis of STE, SR-STE, movement pruning and learned masks. With
ephemeral masks, steps 4 and 7 change: the masks in force during a step are the ones the forward
pass used (the state's), the wrapped optimizer's update runs first, and the mask update (step 4)
comes last and scores the weights *after* this step's update (``params + updates``, what
``optax.apply_updates`` returns): the state's masks are always those of the weights that the next
forward pass sees. Pruned weights keep training (``train_pruned=True``, the straight-through
estimator) or stay frozen at their values until a mask update brings them back
(``train_pruned=False``: movement pruning, learned masks).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxprune import leaves as leaves_lib
from jaxprune import masks as masks_lib
from jaxprune import plan as plan_lib
from jaxprune import rules as rules_lib
from jaxprune import schedules as schedules_lib
from jaxprune import scores as scores_lib
from jaxprune import selection
from jaxprune import sharding as sharding_lib
from jaxprune.typing import Masks, OptState, Sparsity

__all__ = ["Hooks", "Method", "PruningState", "StepInfo", "method_of", "transformation"]

APPLICATIONS = ("persistent", "ephemeral")
STATISTICS = ("keep", "zero_inactive", "reset")


class PruningState(NamedTuple):
  """State of a pruning transformation.

  Attributes:
    count: number of updates so far (int32 scalar).
    masks: a tree shaped like the params: a boolean mask (``True`` = kept) or a
      `jaxprune.masks.PackedMask` for each pruned leaf, ``None`` for the others.
    score_state: the score's own state (`jaxprune.scores.Score.init`), ``None`` for stateless scores.
    inner_state: the wrapped optimizer's state with ``inner=``, else ``optax.EmptyState()``.
  """

  count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, as optax states do
  masks: Masks
  score_state: Any
  inner_state: OptState


class StepInfo(NamedTuple):
  """What hooks read at one update (leaf lists are indexed like ``jax.tree.leaves(params)``).

  Attributes:
    plan: the `jaxprune.plan.Plan` of the params.
    treedef: the params' tree structure.
    count: the update count.
    is_update: whether this is a mask-update step (bool scalar).
    params: the params' leaves.
    grads: the incoming updates' leaves (raw gradients with ``inner=``).
    masks: ``{leaf index: bool mask}`` in force at this step (after the mask update).
    state: the state at the start of the update.
    extra_args: the update's extra arguments.
  """

  plan: plan_lib.Plan
  treedef: Any
  count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, as optax states do
  is_update: jax.Array
  params: list[Any]
  grads: list[Any]
  masks: Mapping[int, jax.Array]
  state: Any
  extra_args: Mapping[str, Any]


def _no_fields(*_: Any) -> dict[str, Any]:
  return {}


class Hooks(NamedTuple):
  """A method's own state and behaviour around the shared loop (all optional).

  Attributes:
    state_class: the state's NamedTuple; it has the fields of `PruningState` and the method's own.
    init: ``(plan, params leaves, treedef) -> {field: value}``, the method's fields at ``init``.
    update_fields: the fields that ``on_update`` sets (kept unchanged on other steps).
    on_update: ``(StepInfo, old masks, MaskUpdate) -> {field: value}``, run on mask-update steps.
    every_step: ``(StepInfo, fields) -> {field: value}``, run at every update, after the mask update;
      ``fields`` holds the fields set so far in this update.
    offers: the names of the extra arguments the method passes to its wrapped optimizer.
    offer: ``(StepInfo, fields) -> {name: value}`` with exactly the names in ``offers``.
    updates: ``(StepInfo, fields, updates leaves) -> updates leaves``, run on the wrapped
      optimizer's output before the projection.
    gradients: ``(StepInfo, fields, gradient leaves) -> gradient leaves``, run on the gradients
      going into the wrapped optimizer (after they are masked); only with ``inner=``: a method
      with this hook sets `Method.needs_inner`. SR-STE adds its decay term here.
  """

  state_class: type = PruningState
  init: Callable[..., dict[str, Any]] = _no_fields
  update_fields: tuple[str, ...] = ()
  on_update: Callable[..., dict[str, Any]] = _no_fields
  every_step: Callable[..., dict[str, Any]] = _no_fields
  offers: tuple[str, ...] = ()
  offer: Callable[..., dict[str, Any]] = _no_fields
  updates: Callable[..., list[Any]] | None = None
  gradients: Callable[..., list[Any]] | None = None


class Method(NamedTuple):
  """A pruning method, declared (see the module docstring).

  Attributes:
    name: the method's name, used in every error message.
    score: what is ranked.
    sparsity: the model-wide target (``None`` for N:M patterns).
    selection: what is selected from, and how targets are shared.
    schedule: when masks change and to which sparsity.
    rule: how a mask update selects.
    application: ``"persistent"`` or ``"ephemeral"``.
    monotone: whether weights pruned at one update stay pruned (default: for persistent masks).
    initial_masks: ``(plan, final, initial) -> {leaf index: mask}``, installed at the first update
      (a random sparse start), or ``None`` (all kept).
    given_masks: a tree of fixed masks in the state from ``init`` (static sparse training), or
      ``None``. The plan then prunes exactly the leaves with a mask.
    statistics: the wrapped optimizer's statistics: ``"keep"``, ``"zero_inactive"`` (those of weights
      not training at a step are zeroed before the update) or ``"reset"`` (the whole state is
      re-initialised on mask-update steps, which feed it no gradient).
    needs_inner: why the method needs ``inner=`` (an error says it), or ``None``.
    packed_masks: store masks as bits.
    hooks: the method's own state and behaviour.
    train_pruned: with ephemeral masks, whether pruned weights keep training (``True``: the
      straight-through estimator of STE and SR-STE) or are frozen (``False``: their gradients are
      masked before the wrapped optimizer and their updates are zero, so they keep their values
      until a mask update brings them back, as in movement pruning and learned masks). Persistent
      masks always zero them.
  """

  name: str
  score: scores_lib.Score
  sparsity: Sparsity | None
  selection: plan_lib.Selection
  schedule: schedules_lib.Schedule
  rule: rules_lib.Rule = rules_lib.prune
  application: str = "persistent"
  monotone: bool | None = None
  initial_masks: Callable[..., dict[int, jax.Array]] | None = None
  given_masks: Masks | None = None
  statistics: str = "keep"
  needs_inner: str | None = None
  packed_masks: bool = False
  hooks: Hooks = Hooks()
  train_pruned: bool = True


def method_of(tx: optax.GradientTransformation) -> Method:
  """The `Method` a transformation made by `transformation` was built from.

  Raises:
    ValueError: for any other transformation.
  """
  method = getattr(tx.init, "jaxprune_method", None)
  if method is None:
    raise ValueError(f"method_of: {tx!r} was not built by jaxprune.engine.transformation.")
  return method


def _names_of(tree: Any) -> list[str]:
  return [name for name, _ in leaves_lib.named_leaves(leaves_lib.unwrap_variables(tree))]


def _flatten_like(treedef: Any, tree: Any, params: Any, owner: str, what: str) -> list[Any]:
  """``tree``'s leaves in the params' order, or a ``ValueError`` naming the leaves that differ."""
  try:
    return leaves_lib.flatten_up_to(treedef, tree)
  except (ValueError, TypeError):
    have, want = _names_of(tree), _names_of(params)
    missing = [n for n in want if n not in have]
    extra = [n for n in have if n not in want]
    raise ValueError(
      f"{owner}: {what} is not shaped like the params: leaves missing {missing}, "
      f"leaves not in the params {extra}."
    ) from None


def _check_shapes(plan: plan_lib.Plan, leaves: list[Any], what: str) -> None:
  for name, shape, leaf in zip(plan.names, plan.shapes, leaves):
    if leaf is not None and tuple(jnp.shape(leaves_lib.unwrap_variable(leaf))) != shape:
      raise ValueError(
        f"{plan.owner}: {what} leaf {name!r} has shape "
        f"{tuple(jnp.shape(leaves_lib.unwrap_variable(leaf)))}, the param {shape}."
      )


def _given_plan(masks: Any, params: Any, owner: str) -> plan_lib.Plan:
  """The plan of fixed masks: exactly the leaves with a mask, unstructured."""
  treedef = jax.tree.structure(params)
  names = _names_of(params)
  try:
    given = leaves_lib.flatten_up_to(treedef, masks)
  except (ValueError, TypeError) as e:
    raise ValueError(
      f"{owner}: masks must be a tree shaped like the params (None for unpruned leaves): {e}"
    ) from None
  units, shapes = [], []
  flat = leaves_lib.flatten_up_to(treedef, params)
  for index, (name, leaf, mask) in enumerate(zip(names, flat, given)):
    leaf = leaves_lib.unwrap_variable(leaf)
    shapes.append(tuple(jnp.shape(leaf)))
    if mask is None:
      continue
    mask = masks_lib.unpack(leaves_lib.unwrap_variable(mask))
    if jnp.shape(mask) != jnp.shape(leaf) or jnp.result_type(mask) != jnp.bool_:
      raise ValueError(
        f"{owner}: the mask of leaf {name!r} must be a bool array of shape "
        f"{jnp.shape(leaf)}, got {jnp.result_type(mask)}{list(jnp.shape(mask))}."
      )
    if not jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
      raise TypeError(
        f"{owner}: leaf {name!r} has a mask but is not floating-point ({jnp.result_type(leaf)})."
      )
    size = int(jnp.size(leaf))
    units.append(plan_lib.Unit(name, ((index, None),), None, shapes[-1], size, size, None))
  return plan_lib.Plan(
    owner, tuple(names), tuple(shapes), tuple(u.members[0][0] for u in units), tuple(units)
  )


def transformation(
  method: Method, inner: optax.GradientTransformation | None = None
) -> optax.GradientTransformationExtraArgs:
  """The optax transformation of a `Method` (the loop is described in the module docstring).

  Args:
    method: the declaration.
    inner: an optimizer to wrap. Without it the transformation must be the last link of a chain,
      where it sees the chain's updates instead of raw gradients.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is ``method.hooks.state_class``.

  Raises:
    ValueError: for a method that needs ``inner`` without it, an unknown application or
      statistics policy.
  """
  name, hooks, score = method.name, method.hooks, method.score
  if method.application not in APPLICATIONS:
    raise ValueError(
      f"{name}: application must be one of {APPLICATIONS}, got {method.application!r}."
    )
  if method.statistics not in STATISTICS:
    raise ValueError(f"{name}: statistics must be one of {STATISTICS}, got {method.statistics!r}.")
  if method.needs_inner and inner is None:
    raise ValueError(f"{name}: needs the inner= form (inner=optimizer): {method.needs_inner}")
  if hooks.gradients is not None and inner is None:
    raise ValueError(
      f"{name}: edits the gradients going into the optimizer, which it reaches only in the "
      f"inner= form: use inner=optimizer."
    )
  if method.statistics != "keep" and inner is None:
    raise ValueError(
      f"{name}: editing the optimizer's statistics needs the inner= form: in "
      f"optax.chain the pruner cannot reach them. Use inner=optimizer."
    )
  persistent = method.application == "persistent"
  monotone = persistent if method.monotone is None else method.monotone
  if inner is not None:
    inner = optax.with_extra_args_support(inner)

  def store(mask, like):
    """The mask as the state keeps it: packed along ``like``'s axis (a param: the axis it is not
    sharded on; a stored mask: the axis it was packed along), or as it is."""
    if not method.packed_masks:
      return mask
    if isinstance(like, masks_lib.PackedMask):
      return masks_lib.pack(mask, masks_lib.packed_axis(like))
    return masks_lib.pack(mask, masks_lib.pack_axis(like))

  given = None
  if method.given_masks is not None:  # host copies: constants of the run, not traced inputs
    given = jax.tree.map(
      lambda m: masks_lib.unpack(leaves_lib.unwrap_variable(m)),
      method.given_masks,
      is_leaf=lambda x: isinstance(x, masks_lib.PackedMask) or leaves_lib.is_variable(x),
    )

  def plan_for(params):
    if given is not None:
      return _given_plan(given, leaves_lib.unwrap_variables(params), name)
    return plan_lib.make_plan(params, method.selection, name)

  def unit_targets(plan):
    if given is not None or not method.rule.uses_targets:
      return [None] * len(plan.units), [None] * len(plan.units)
    return plan_lib.targets(
      plan, method.selection, method.sparsity, method.schedule.initial_sparsity
    )

  def init_fn(params):
    plan = plan_for(params)
    unit_targets(plan)  # bad allocations and ramps fail at init, not inside the first step
    leaves, treedef = jax.tree.flatten(leaves_lib.unwrap_variables(params))
    masks: list[Any] = [None] * len(leaves)
    fixed = None if given is None else leaves_lib.flatten_up_to(treedef, given)
    for i in plan.masked:
      mask = jnp.asarray(fixed[i]) if fixed is not None else jnp.ones_like(leaves[i], dtype=bool)
      # Placed like the param: under jit without out_shardings a constant would go to one device.
      masks[i] = store(sharding_lib.placed_like(mask, leaves[i]), leaves[i])
    tree = jax.tree.unflatten(treedef, leaves)
    score_state = None if score.init is None else score.init(tree)
    score_state = sharding_lib.placed_tree_like(score_state, tree)
    inner_state = optax.EmptyState() if inner is None else inner.init(params)
    inner_state = sharding_lib.placed_tree_like(inner_state, params)
    return hooks.state_class(
      count=jnp.zeros([], jnp.int32),
      masks=jax.tree.unflatten(treedef, masks),
      score_state=score_state,
      inner_state=inner_state,
      **hooks.init(plan, leaves, treedef),
    )

  # method_of reads the declaration back; mypy does not model attributes set on functions.
  init_fn.jaxprune_method = method  # type: ignore[attr-defined]

  def update_impl(updates, state, params, extra_args):
    plan = plan_for(params)
    treedef = jax.tree.structure(params)
    grads = _flatten_like(treedef, updates, params, name, "the updates (gradients) tree")
    _check_shapes(plan, grads, "the updates'")
    stored = _flatten_like(
      treedef, state.masks, params, name, "the state (initialised on other params?)"
    )
    for i in plan.masked:
      if stored[i] is None or jnp.shape(masks_lib.unpack(stored[i])) != plan.shapes[i]:
        raise ValueError(
          f"{name}: the state's mask of leaf {plan.names[i]!r} does not fit the param "
          f"of shape {plan.shapes[i]}: the state was initialised on other params."
        )
    missing = [a for a in score.extra_args if a not in extra_args]
    if missing:
      raise ValueError(
        f"{name}: the score {score.name!r} reads the update arguments {missing}; pass "
        f"them as tx.update(grads, state, params, {missing[0]}=...)."
      )
    p = leaves_lib.flatten_up_to(treedef, params)
    count = state.count
    final, initial = unit_targets(plan)
    inputs = scores_lib.ScoreInputs(
      params,
      updates if score.reads_grads else None,
      count,
      state.score_state,
      {a: extra_args[a] for a in score.extra_args},
      tuple(plan.masked),
    )
    score_state = state.score_state
    if score.update is not None:
      score_state = score.update(score_state, inputs)
      inputs = inputs._replace(state=score_state)

    initial_masks = method.initial_masks
    if initial_masks is not None:

      def install():
        start = initial_masks(plan, final, initial)
        return [store(start[i], stored[i]) for i in plan.masked]

      current = selection.cond(count == 0, install, lambda: [stored[i] for i in plan.masked])
      for i, m in zip(plan.masked, current):
        stored[i] = m

    is_update = method.schedule.is_update_step(count)
    kept_fields = {f: getattr(state, f) for f in hooks.update_fields}
    info = StepInfo(plan, treedef, count, is_update, p, grads, {}, state, extra_args)

    def mask_update(
      scored_at: Callable[[], tuple[list[Any], scores_lib.ScoreInputs]],
    ) -> tuple[list[Any], list[Any], dict[str, Any]]:
      """The mask update (step 4) on the params and score inputs ``scored_at()`` makes inside the
      update branch (so steps without a mask update never compute them): (stored masks, train
      masks, fields)."""

      def recompute():
        at_params, at_inputs = scored_at()
        old = {i: masks_lib.unpack(stored[i]) for i in plan.masked}
        scores = _flatten_like(
          treedef, score.fn(at_inputs), params, name, f"the tree of scores of {score.name!r}"
        )
        unit_scores = rules_lib.channel_scores(plan, score.channel_fn, at_inputs)
        result = method.rule.fn(
          rules_lib.RuleInputs(
            plan,
            method.selection,
            method.schedule,
            method.sparsity,
            final,
            initial,
            count,
            scores,
            at_params,
            grads,
            old,
            monotone,
            unit_scores,
            score.entry,
          )
        )
        fields = hooks.on_update(info, old, result)
        new = [store(result.masks[i], stored[i]) for i in plan.masked]
        if method.rule.separate_train:
          assert result.train is not None  # a rule with separate_train returns them
          return new, [result.train[i] for i in plan.masked], fields
        return new, fields

      def keep():
        kept = [stored[i] for i in plan.masked]
        if method.rule.separate_train:
          return kept, [masks_lib.unpack(m) for m in kept], kept_fields
        return kept, kept_fields

      out = keep() if given is not None else selection.cond(is_update, recompute, keep)
      train = out[1] if method.rule.separate_train else [masks_lib.unpack(m) for m in out[0]]
      return out[0], train, dict(out[-1])

    if persistent:
      new_stored, train, fields = mask_update(lambda: (p, inputs))
      for i, m in zip(plan.masked, new_stored):
        stored[i] = m
    else:  # ephemeral: this step runs with the masks of its forward pass; the update comes last
      train, fields = [masks_lib.unpack(stored[i]) for i in plan.masked], dict(kept_fields)
    masks = dict(zip(plan.masked, train))
    info = info._replace(masks=masks)
    fields.update(hooks.every_step(info, fields))
    freeze = not persistent and not method.train_pruned

    inner_state = state.inner_state
    out = grads
    if inner is not None:
      g = list(grads)
      fresh = None
      if method.statistics == "zero_inactive":
        mask_tree = [jnp.ones((), bool)] * len(p)
        for i, m in masks.items():
          mask_tree[i] = m
        inner_state = optax.tree_utils.tree_map_params(
          inner,
          lambda x, m: jnp.where(m, x, jnp.zeros((), x.dtype)),
          inner_state,
          jax.tree.unflatten(treedef, mask_tree),
        )
      elif method.statistics == "reset":
        # A mask update re-initialises the optimizer and feeds it no gradient, so the next step is
        # its first. Its params-shaped statistics are reset before its update (a zero gradient
        # keeps them at their initial zeros), its other leaves (step counts) after it.
        fresh = inner.init(params)
        inner_state = jax.tree.map(lambda f, s: jnp.where(is_update, f, s), fresh, inner_state)
        g = [jnp.where(is_update, jnp.zeros((), x.dtype), x) for x in g]
      if persistent or freeze:
        for i, m in masks.items():
          g[i] = jnp.where(m, g[i], jnp.zeros((), g[i].dtype))
      if hooks.gradients is not None:
        g = list(hooks.gradients(info, fields, g))
      offered = hooks.offer(info, fields)
      if set(offered) != set(hooks.offers):
        raise ValueError(f"{name}: offers {sorted(offered)}, declared {sorted(hooks.offers)}.")
      new_updates, inner_state = inner.update(
        jax.tree.unflatten(treedef, g), inner_state, params, **extra_args, **offered
      )
      out = leaves_lib.flatten_up_to(treedef, new_updates)
      if fresh is not None:
        is_param = optax.tree_utils.tree_map_params(
          inner, lambda _: True, fresh, transform_non_params=lambda _: False
        )
        inner_state = jax.tree.map(
          lambda f, s, q: s if q else jnp.where(is_update, f, s), fresh, inner_state, is_param
        )
    if hooks.updates is not None:
      out = hooks.updates(info, fields, out)
    if persistent or freeze:
      out = list(out)
      for i, m in masks.items():
        u = out[i]
        # Persistent: a pruned weight's update is -w, so it is exactly 0 after apply_updates.
        # Frozen: its update is 0, so it keeps its value.
        out[i] = jnp.where(m, u, -p[i].astype(u.dtype) if persistent else jnp.zeros((), u.dtype))
    if not persistent:
      # The weights after optax.apply_updates, which the next forward pass masks: score them.
      def after_step() -> tuple[list[Any], scores_lib.ScoreInputs]:
        after = [
          x if x is None or u is None else jnp.asarray(x + u).astype(jnp.result_type(x))
          for x, u in zip(p, out)
        ]
        return after, inputs._replace(params=jax.tree.unflatten(treedef, after))

      new_stored, _, update_fields = mask_update(after_step)
      for i, m in zip(plan.masked, new_stored):
        stored[i] = m
      fields.update(update_fields)
    new_state = state._replace(
      count=optax.safe_increment(count),
      masks=jax.tree.unflatten(treedef, stored),
      score_state=score_state,
      inner_state=inner_state,
      **fields,
    )
    return jax.tree.unflatten(treedef, out), new_state

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      return update_impl(updates, state, params, extra_args)
    # On a mesh with explicit axes the work runs in auto mode; outputs keep the inputs' shardings.
    return sharding_lib.run_in_auto_mode(
      update_impl,
      lambda: sharding_lib.shardings((updates, state), params),
      updates,
      state,
      params,
      extra_args,
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
