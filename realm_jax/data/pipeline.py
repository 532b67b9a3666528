"""Seeded grain input pipelines for RL (raw records) and SFT (token batches).

Conventions
- Token batches are left padded: `tokens int32[B, T]`, `mask int32[B, T]`
  (1 = real token), `loss_mask int32[B, T]` (1 = completion token, i.e. a
  token whose prediction counts; the loss for token t uses the logits at
  t - 1, and the caller shifts).
- `T` is always one of `buckets` (strictly increasing): the smallest bucket
  that holds the batch's longest item. Items longer than the largest bucket
  are dropped before batching and counted (`SFTBatches.num_too_long`).
- `batch_size` is per process. RL shards *records*: process i of n reads
  `records[i::n]`, shuffled with the run seed. SFT shards *rows*: every
  process walks the same shuffled stream of global batches (n * batch_size
  items) and keeps rows [i * batch_size, (i + 1) * batch_size), so the bucket
  (hence T) is chosen from the global batch and agrees across processes.
- Shuffling is grain's global index shuffle, reseeded each epoch; the same
  seed gives the same batches.
- Iterator state is grain's (`{'next_index': int}` for these pipelines) and
  is JSON-serialisable; `get_state` / `restore` are what checkpoints call.
"""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Sequence
from typing import Any

import grain
import jax
import numpy as np

from realm_jax.model.tokenizer import Tokenizer


# ------------------------------------------------------------------- padding
def bucket_length(n: int, buckets: Sequence[int]) -> int:
  """Smallest bucket >= n; ValueError when n exceeds the largest bucket."""
  _check_buckets(buckets)
  for b in buckets:
    if n <= b:
      return b
  raise ValueError(f'sequence length {n} exceeds the largest bucket {buckets[-1]} '
                   f'(buckets={tuple(buckets)})')


def _check_buckets(buckets: Sequence[int]) -> None:
  if not buckets or any(not isinstance(b, (int, np.integer)) or b <= 0 for b in buckets):
    raise ValueError(f'buckets must be a non-empty sequence of positive ints, got {buckets!r}')
  if any(a >= b for a, b in zip(buckets, buckets[1:])):
    raise ValueError(f'buckets must be strictly increasing, got {tuple(buckets)}')


def pad_left(seqs: Sequence[Sequence[int]], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """Left pads `seqs` to `length`: returns (tokens int32[B, length], mask int32[B, length])."""
  tokens = np.full((len(seqs), length), pad_id, np.int32)
  mask = np.zeros((len(seqs), length), np.int32)
  for b, s in enumerate(seqs):
    if len(s) > length:
      raise ValueError(f'row {b} has {len(s)} tokens, more than the padded length {length}')
    if len(s):
      tokens[b, length - len(s):] = s
      mask[b, length - len(s):] = 1
  return tokens, mask


# ------------------------------------------------------------------- records
def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  if process_index is None or process_count is None:
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} is outside [0, process_count={process_count})')
  return process_index, process_count


def record_dataset(records: Sequence, *, seed: int, shuffle: bool = True, repeat: bool = True,
                   process_index: int | None = None,
                   process_count: int | None = None) -> grain.MapDataset:
  """This process's shard `records[i::n]` as a MapDataset, shuffled (seeded) and
  repeated. Records are opaque picklable objects. `i, n` default to
  `jax.process_index(), jax.process_count()`."""
  i, n = _process(process_index, process_count)
  if len(records) < n:
    raise ValueError(f'{len(records)} records cannot be sharded over {n} processes')
  ds = grain.MapDataset.source(records)[i::n]
  if shuffle:
    ds = ds.shuffle(seed=seed)
  return ds.repeat() if repeat else ds


def _read_options(num_threads: int) -> grain.ReadOptions:
  return grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=max(2, 4 * num_threads))


def rl_batches(records: Sequence, batch_size: int, seed: int, *, shuffle: bool = True,
               repeat: bool = True, drop_remainder: bool = True,
               process_index: int | None = None, process_count: int | None = None,
               num_threads: int = 1) -> grain.DatasetIterator:
  """Checkpointable iterator of lists of `batch_size` raw records from this
  process's shard (see `record_dataset`)."""
  if batch_size <= 0:
    raise ValueError(f'batch_size must be positive, got {batch_size}')
  ds = record_dataset(records, seed=seed, shuffle=shuffle, repeat=repeat,
                      process_index=process_index, process_count=process_count)
  if not repeat and drop_remainder and len(ds) < batch_size:
    raise ValueError(f'this process shard has {len(ds)} records, fewer than batch_size='
                     f'{batch_size}, so drop_remainder would yield no batch')
  ds = ds.batch(batch_size, drop_remainder=drop_remainder, batch_fn=list)
  return iter(ds.to_iter_dataset(_read_options(num_threads)))


# ----------------------------------------------------------------------- SFT
def _prompt_completion(record: Any) -> tuple[str, str]:
  if isinstance(record, (tuple, list)) and len(record) == 2:
    return record[0], record[1]
  if isinstance(record, dict) and 'prompt' in record and 'completion' in record:
    return record['prompt'], record['completion']
  if hasattr(record, 'prompt') and hasattr(record, 'completion'):
    return record.prompt, record.completion
  raise TypeError(f'SFT record must be a (prompt, completion) pair or carry prompt/completion '
                  f'fields, got {type(record).__name__}')


def tokenize_sft(records: Sequence, tokenizer: Tokenizer, max_length: int, *,
                 add_bos: bool = True) -> tuple[list[tuple[list[int], list[int]]], int]:
  """Tokenizes (prompt, completion) pairs on the host: prompt (BOS first when
  `add_bos` and the tokenizer has one) and completion + [EOS], tokenized
  apart so the boundary is exact. Returns (kept pairs of id lists, number
  dropped for exceeding `max_length`)."""
  kept, too_long = [], 0
  for r in records:
    prompt, completion = _prompt_completion(r)
    p = tokenizer.encode(prompt, add_bos=add_bos)
    c = tokenizer.encode(completion) + [tokenizer.eos_id]
    if len(p) + len(c) > max_length:
      too_long += 1
    else:
      kept.append((p, c))
  return kept, too_long


def collate_sft(items: Sequence[tuple[list[int], list[int]]], *, buckets: Sequence[int],
                pad_id: int, rows: slice = slice(None)) -> dict[str, np.ndarray]:
  """(prompt ids, completion ids) pairs -> left-padded batch of `items[rows]`
  at the bucket of the longest of *all* `items`."""
  length = bucket_length(max(len(p) + len(c) for p, c in items), buckets)
  mine = items[rows]
  tokens, mask = pad_left([p + c for p, c in mine], length, pad_id)
  loss_mask = np.zeros_like(mask)
  for b, (_, c) in enumerate(mine):
    loss_mask[b, length - len(c):] = 1
  return {'tokens': tokens, 'mask': mask, 'loss_mask': loss_mask}


GROUP_WINDOW = 64  # batches: the order of the buckets is shuffled within each window


def bucket_groups(items: Sequence[tuple[list[int], list[int]]], buckets: Sequence[int],
                  min_size: int) -> list[list]:
  """`items` by the smallest bucket that holds each, in bucket order; a group of fewer than
  `min_size` items joins the next larger one (the largest, the one before it)."""
  by: dict[int, list] = {}
  for it in items:
    by.setdefault(bucket_length(len(it[0]) + len(it[1]), buckets), []).append(it)
  groups: list[list] = []
  carry: list = []
  for b in sorted(by):
    carry = carry + by[b]
    if len(carry) >= min_size:
      groups.append(carry)
      carry = []
  if carry:
    if groups:
      groups[-1] = groups[-1] + carry
    else:
      groups.append(carry)
  return groups


class SFTBatches:
  """Iterator of SFT batch dicts that also carries the pipeline's counts.

  Attributes: `num_examples` (kept, all processes), `num_too_long` (dropped
  for exceeding the largest bucket). `get_state` / `set_state` are grain's.
  """

  def __init__(self, iterator: grain.DatasetIterator, num_examples: int, num_too_long: int):
    self._it, self.num_examples, self.num_too_long = iterator, num_examples, num_too_long

  def __iter__(self) -> SFTBatches:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self._it)

  def get_state(self) -> dict:
    return self._it.get_state()

  def set_state(self, state: dict) -> None:
    self._it.set_state(state)


def sft_batches(records: Sequence, tokenizer: Tokenizer, batch_size: int,
                buckets: Sequence[int], seed: int, *, add_bos: bool = True,
                shuffle: bool = True, repeat: bool = True, drop_remainder: bool = True,
                process_index: int | None = None, process_count: int | None = None,
                num_threads: int = 1, group_by_bucket: bool = False) -> SFTBatches:
  """Checkpointable iterator of `{'tokens', 'mask', 'loss_mask'}` int32[B, T]
  batches for SFT on (prompt, completion) records; see the module docstring
  for bucketing and sharding. Tokenization is eager (host, once).

  `group_by_bucket` (with `repeat`): each batch draws from one bucket's items only (a
  bucket with fewer than a batch of items joins the next larger one), the buckets mixed in
  proportion to their items (their order shuffled within windows of `GROUP_WINDOW`
  batches), so a few long items no longer pad every batch to their length."""
  if batch_size <= 0:
    raise ValueError(f'batch_size must be positive, got {batch_size}')
  _check_buckets(buckets)
  i, n = _process(process_index, process_count)
  items, too_long = tokenize_sft(records, tokenizer, buckets[-1], add_bos=add_bos)
  global_batch = batch_size * n
  if not items or (drop_remainder and not repeat and len(items) < global_batch):
    raise ValueError(f'{len(items)} SFT examples fit the largest bucket {buckets[-1]} '
                     f'({too_long} too long), fewer than one global batch of {global_batch}')
  collate = functools.partial(collate_sft, buckets=tuple(buckets), pad_id=tokenizer.pad_id,
                              rows=slice(i * batch_size, (i + 1) * batch_size))
  if group_by_bucket:
    if not repeat:
      raise ValueError('group_by_bucket mixes repeated per-bucket streams: it needs repeat=True')
    groups = bucket_groups(items, buckets, global_batch)
    seeds = np.random.SeedSequence([seed, len(groups)]).generate_state(len(groups) + 1)
    ds = grain.MapDataset.mix(
        [record_dataset(g, seed=int(s), shuffle=shuffle, process_index=0, process_count=1)
         .batch(global_batch, drop_remainder=True, batch_fn=collate)
         for g, s in zip(groups, seeds)], weights=[len(g) for g in groups])
    if shuffle:  # mix interleaves in a fixed pattern: shuffle it within windows of batches
      ds = grain.experimental.WindowShuffleMapDataset(ds, window_size=GROUP_WINDOW,
                                                      seed=int(seeds[-1]))
  else:
    ds = record_dataset(items, seed=seed, shuffle=shuffle, repeat=repeat,
                        process_index=0, process_count=1)
    ds = ds.batch(global_batch, drop_remainder=drop_remainder, batch_fn=collate)
  return SFTBatches(iter(ds.to_iter_dataset(_read_options(num_threads))), len(items), too_long)


# --------------------------------------------------------------------- state
def get_state(iterator) -> dict:
  """The iterator's position as a JSON-serialisable dict (grain's dict state as
  is; a bytes state, as `grain.DataLoader` gives, wrapped in base64)."""
  state = iterator.get_state()
  if isinstance(state, bytes):
    return {'grain_state_base64': base64.b64encode(state).decode('ascii')}
  json.dumps(state)  # fail here, not in the checkpoint writer
  return state


def restore(iterator, state: dict) -> None:
  """Moves `iterator` to a position saved by `get_state`."""
  if isinstance(state, dict) and set(state) == {'grain_state_base64'}:
    state = base64.b64decode(state['grain_state_base64'])
  iterator.set_state(state)
