"""Structured pruning: channel groups read off a function's jaxpr, their importance, and slimming.

`dependency_groups(fn, params, *args)` finds every set of channels of ``fn`` that can be removed
together; `slim(fn, params, groups, keeps)` removes them, returning physically smaller params and
the function that runs on them; `resize_module` rebuilds a Flax module at the new widths;
`ispasp` picks the channels to keep by i-SpaSP's sparse recovery on calibration data.
"""

from jaxprune.structured import importance as importance
from jaxprune.structured.channel_group import ChannelGroup as ChannelGroup
from jaxprune.structured.channel_group import Member as Member
from jaxprune.structured.channel_group import check_keeps as check_keeps
from jaxprune.structured.channel_group import keep_masks as keep_masks
from jaxprune.structured.discovery import dependency_groups as dependency_groups
from jaxprune.structured.importance import select as select
from jaxprune.structured.ispasp import ispasp as ispasp
from jaxprune.structured.ispasp import ispasp_hidden as ispasp_hidden
from jaxprune.structured.slim import slim as slim
from jaxprune.structured.widths import fit_widths as fit_widths
from jaxprune.structured.widths import resize_module as resize_module

__all__ = [
  "ChannelGroup",
  "Member",
  "check_keeps",
  "dependency_groups",
  "fit_widths",
  "importance",
  "ispasp",
  "ispasp_hidden",
  "keep_masks",
  "resize_module",
  "select",
  "slim",
]
