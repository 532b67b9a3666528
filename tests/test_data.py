"""Input pipeline tests: padding and buckets by hand, determinism, resume,
process sharding."""

import collections
import json

import numpy as np
import pytest

from realm_jax.data import pipeline as data
from realm_jax.model.tokenizer import Tokenizer


class CharTokenizer(Tokenizer):
  """'a'..'z' -> 1..26, BOS 30, EOS 31, pad 0: ids readable by hand."""

  def __init__(self):
    self._finish(30, 31, 0, None, 'chars')

  def encode(self, text, add_bos=False):
    return ([30] if add_bos else []) + [ord(c) - 96 for c in text]

  def decode(self, ids, skip_special=True):
    return ''.join(chr(i + 96) for i in ids if 1 <= i <= 26)

  @property
  def vocab_size(self):
    return 32

  def token_to_id(self, token):
    return None

  def id_to_token(self, token_id):
    return str(token_id)


RECORDS = [{'id': i, 'question': f'q{i}'} for i in range(23)]


def _take(it, n):
  return [next(it) for _ in range(n)]


def _ids(batches):
  return [[r['id'] for r in b] for b in batches]


# ------------------------------------------------------------ pad / buckets
def test_bucket_length():
  assert data.bucket_length(1, (4, 8, 16)) == 4
  assert data.bucket_length(4, (4, 8, 16)) == 4
  assert data.bucket_length(5, (4, 8, 16)) == 8
  assert data.bucket_length(16, (4, 8, 16)) == 16
  with pytest.raises(ValueError, match='length 17 exceeds the largest bucket 16'):
    data.bucket_length(17, (4, 8, 16))
  with pytest.raises(ValueError, match='strictly increasing'):
    data.bucket_length(3, (8, 4))
  with pytest.raises(ValueError, match='positive'):
    data.bucket_length(3, ())


def test_pad_left_hand_checked():
  tokens, mask = data.pad_left([[5, 6, 7], [9], []], 4, pad_id=0)
  np.testing.assert_array_equal(tokens, [[0, 5, 6, 7], [0, 0, 0, 9], [0, 0, 0, 0]])
  np.testing.assert_array_equal(mask, [[0, 1, 1, 1], [0, 0, 0, 1], [0, 0, 0, 0]])
  assert tokens.dtype == np.int32 and mask.dtype == np.int32
  with pytest.raises(ValueError, match='row 0 has 3 tokens'):
    data.pad_left([[1, 2, 3]], 2, pad_id=0)


# ------------------------------------------------------------------ records
def test_record_shards_disjoint_and_complete():
  for shuffle in (False, True):
    shards = [list(data.record_dataset(RECORDS, seed=3, shuffle=shuffle, repeat=False,
                                       process_index=i, process_count=2)) for i in range(2)]
    ids = [{r['id'] for r in s} for s in shards]
    assert not ids[0] & ids[1]
    assert ids[0] | ids[1] == set(range(23))
    assert sorted(ids[0]) == list(range(0, 23, 2))  # process i reads records[i::n]
  with pytest.raises(ValueError, match='process_index=2'):
    data.record_dataset(RECORDS, seed=0, process_index=2, process_count=2)


def test_rl_batches_seeded_and_each_epoch_a_permutation():
  a = _ids(_take(data.rl_batches(RECORDS, 4, seed=7, process_index=0, process_count=1), 12))
  b = _ids(_take(data.rl_batches(RECORDS, 4, seed=7, process_index=0, process_count=1), 12))
  c = _ids(_take(data.rl_batches(RECORDS, 4, seed=8, process_index=0, process_count=1), 12))
  assert a == b
  assert a != c
  assert all(len(x) == 4 for x in a)
  flat = sum(a, [])
  assert sorted(flat[:23]) == list(range(23))  # first epoch: every record once
  assert flat[:23] != list(range(23))  # shuffled


def test_rl_batches_keep_records_opaque():
  class Item:
    def __init__(self, i):
      self.i = i
  items = [Item(i) for i in range(6)]
  batch = next(data.rl_batches(items, 6, seed=0, repeat=False, process_index=0, process_count=1))
  assert sorted(x.i for x in batch) == list(range(6))


def test_rl_resume_continues_exactly():
  kw = dict(batch_size=3, seed=11, process_index=1, process_count=2)
  it = data.rl_batches(RECORDS, **kw)
  _take(it, 3)
  state = json.loads(json.dumps(data.get_state(it)))  # as the checkpoint stores it
  expected = _ids(_take(it, 5))
  fresh = data.rl_batches(RECORDS, **kw)
  data.restore(fresh, state)
  assert _ids(_take(fresh, 5)) == expected
  uninterrupted = data.rl_batches(RECORDS, **kw)
  assert _ids(_take(uninterrupted, 8))[3:] == expected


def test_rl_batches_errors():
  with pytest.raises(ValueError, match='fewer than batch_size=20'):
    data.rl_batches(RECORDS, 20, seed=0, repeat=False, process_index=0, process_count=2)


# ---------------------------------------------------------------------- SFT
def test_sft_batch_hand_checked():
  pairs = [('ab', 'c'), ('abcde', 'ab')]
  it = data.sft_batches(pairs, CharTokenizer(), batch_size=2, buckets=(4, 8, 16), seed=0,
                        shuffle=False, process_index=0, process_count=1)
  batch = next(it)
  # row 0: [BOS a b | c EOS] (5 tokens); row 1: [BOS a b c d e | a b EOS] (9) -> bucket 16
  z = [0] * 11
  np.testing.assert_array_equal(batch['tokens'], [
      z + [30, 1, 2, 3, 31],
      [0] * 7 + [30, 1, 2, 3, 4, 5, 1, 2, 31]])
  np.testing.assert_array_equal(batch['mask'], [[0] * 11 + [1] * 5, [0] * 7 + [1] * 9])
  np.testing.assert_array_equal(batch['loss_mask'], [[0] * 14 + [1] * 2, [0] * 13 + [1] * 3])
  for k in ('tokens', 'mask', 'loss_mask'):
    assert batch[k].dtype == np.int32
  assert (it.num_examples, it.num_too_long) == (2, 0)


def test_sft_record_forms_and_too_long_counted():
  records = [{'prompt': 'ab', 'completion': 'c'},      # 5 tokens
             ('abcdefg', 'h'),                           # 10 tokens: too long for 8
             {'prompt': 'abcdef', 'completion': ''},     # 8 tokens: fits exactly
             ('a' * 20, 'b')]                            # 23 tokens: too long
  it = data.sft_batches(records, CharTokenizer(), batch_size=2, buckets=(4, 8), seed=0,
                        shuffle=False, repeat=False, process_index=0, process_count=1)
  assert (it.num_examples, it.num_too_long) == (2, 2)
  batch = next(it)
  assert batch['tokens'].shape == (2, 8)
  np.testing.assert_array_equal(batch['loss_mask'][1], [0] * 7 + [1])  # only EOS
  with pytest.raises(StopIteration):
    next(it)


def _sft_records(n=40, seed=0):
  rng = np.random.default_rng(seed)
  letters = 'abcdefghijklmnopqrstuvwxyz'
  word = lambda k: ''.join(rng.choice(list(letters), k))
  return [(word(rng.integers(1, 12)), word(rng.integers(1, 12))) for _ in range(n)]


def test_sft_bucket_is_smallest_fitting_longest_item():
  buckets = (8, 12, 16, 32)
  it = data.sft_batches(_sft_records(), CharTokenizer(), 4, buckets, seed=1,
                        process_index=0, process_count=1)
  seen = set()
  for batch in _take(it, 30):
    t = batch['tokens'].shape[1]
    seen.add(t)
    longest = int(batch['mask'].sum(1).max())
    assert t in buckets and t >= longest
    assert all(b < longest for b in buckets if b < t)  # no smaller bucket would fit
    # completion tokens are a suffix of the real tokens and end with EOS
    assert np.all(batch['loss_mask'] <= batch['mask'])
    assert np.all(batch['tokens'][:, -1] == 31)
  assert len(seen) > 1


def test_sft_seeded_and_resume():
  recs, tok = _sft_records(), CharTokenizer()
  kw = dict(batch_size=3, buckets=(8, 16, 32), process_index=0, process_count=1)
  run = lambda seed: [b['tokens'].tolist() for b in _take(data.sft_batches(recs, tok, seed=seed, **kw), 6)]
  assert run(5) == run(5)
  assert run(5) != run(6)
  it = data.sft_batches(recs, tok, seed=5, **kw)
  _take(it, 4)
  state = json.loads(json.dumps(data.get_state(it)))
  expected = [b['tokens'].tolist() for b in _take(it, 5)]
  fresh = data.sft_batches(recs, tok, seed=5, **kw)
  data.restore(fresh, state)
  assert [b['tokens'].tolist() for b in _take(fresh, 5)] == expected


def test_sft_processes_split_global_batch():
  recs, tok = _sft_records(), CharTokenizer()
  kw = dict(buckets=(8, 16, 32), seed=2)
  whole = _take(data.sft_batches(recs, tok, 6, process_index=0, process_count=1, **kw), 8)
  parts = [_take(data.sft_batches(recs, tok, 3, process_index=i, process_count=2, **kw), 8)
           for i in range(2)]
  for w, p0, p1 in zip(whole, *parts):
    assert p0['tokens'].shape == p1['tokens'].shape  # same T on every process
    for k in ('tokens', 'mask', 'loss_mask'):
      np.testing.assert_array_equal(np.concatenate([p0[k], p1[k]]), w[k])


def test_process_defaults_to_jax():
  import jax
  assert (jax.process_index(), jax.process_count()) == (0, 1)
  a = _ids(_take(data.rl_batches(RECORDS, 4, seed=1), 3))
  assert a == _ids(_take(data.rl_batches(RECORDS, 4, seed=1, process_index=0, process_count=1), 3))


# ------------------------------------------------------------ grouped by bucket
def test_bucket_groups_hand_checked():
  items = [([1] * n, [2]) for n in (3, 4, 5, 10, 12, 30)]  # lengths 4, 5, 6, 11, 13, 31
  groups = data.bucket_groups(items, (8, 16, 32), min_size=2)
  assert [[len(p) + len(c) for p, c in g] for g in groups] == [[4, 5, 6], [11, 13, 31]]
  # a small group joins the next larger bucket's; everything in one group when all are small
  groups = data.bucket_groups(items, (8, 16, 32), min_size=4)
  assert [[len(p) + len(c) for p, c in g] for g in groups] == [[4, 5, 6, 11, 13, 31]]
  assert data.bucket_groups(items[:3], (8, 16, 32), min_size=1) == [items[:3]]


def _two_lengths(n_short=30, n_long=10):
  """Short pairs ('a'-words, 4-7 tokens with BOS and EOS) and long ones ('z', 20-26)."""
  return ([('a' * (1 + i % 3), 'a' * (1 + i % 2)) for i in range(n_short)]
          + [('z' * (10 + i % 5), 'z' * (8 + i % 2)) for i in range(n_long)])


def test_grouped_batches_hold_one_bucket_in_proportion_and_every_item():
  recs, tok = _two_lengths(), CharTokenizer()
  it = data.sft_batches(recs, tok, 5, (8, 32), seed=3, process_index=0, process_count=1,
                        group_by_bucket=True)
  batches = _take(it, 1600)
  kinds = []
  for b in batches:
    real = b['tokens'][b['mask'].astype(bool)]
    letters = set(real[(real >= 1) & (real <= 26)].tolist())
    assert letters in ({1}, {26})  # never a short and a long item in one batch
    kinds.append(26 in letters)
    assert b['tokens'].shape[1] == (32 if 26 in letters else 8)
  # 10 long items of 40: a quarter of the batches, exactly so over whole windows of the
  # shuffle (25 of 64 batches) that cover whole periods of the mix (4 of 400)
  assert np.mean(kinds) == 0.25
  # the order is shuffled: not one periodic pattern in every window, nor the same across seeds
  assert len({tuple(kinds[i:i + 64]) for i in range(0, 1600, 64)}) > 12
  other = _take(data.sft_batches(recs, tok, 5, (8, 32), seed=4, process_index=0,
                                 process_count=1, group_by_bucket=True), 64)
  assert [b['tokens'].shape[1] == 32 for b in other] != kinds[:64]
  # whole windows hold a prefix of each bucket's stream of epochs: every item of a bucket
  # comes e or e + 1 times, and nothing else comes (a text that m items share: m e .. m (e + 1))
  seqs = [tuple(tok.encode(p, add_bos=True) + tok.encode(c) + [31]) for p, c in recs]
  counts = collections.Counter(tuple(row[m.astype(bool)].tolist()) for b in batches
                               for row, m in zip(b['tokens'], b['mask']))
  assert set(counts) <= set(seqs)
  for group in (seqs[:30], seqs[30:]):
    mult = collections.Counter(group)
    e = min(counts[q] // m for q, m in mult.items())
    assert e > 0 and all(m * e <= counts[q] <= m * (e + 1) for q, m in mult.items())


def test_grouped_batches_resume_and_split_over_processes():
  recs, tok = _two_lengths(), CharTokenizer()
  kw = dict(buckets=(8, 32), seed=4, group_by_bucket=True)
  it = data.sft_batches(recs, tok, 4, process_index=0, process_count=1, **kw)
  _take(it, 7)
  state = json.loads(json.dumps(data.get_state(it)))
  expected = [b['tokens'].tolist() for b in _take(it, 9)]
  fresh = data.sft_batches(recs, tok, 4, process_index=0, process_count=1, **kw)
  data.restore(fresh, state)
  assert [b['tokens'].tolist() for b in _take(fresh, 9)] == expected
  whole = _take(data.sft_batches(recs, tok, 4, process_index=0, process_count=1, **kw), 8)
  parts = [_take(data.sft_batches(recs, tok, 2, process_index=i, process_count=2, **kw), 8)
           for i in range(2)]
  for w, p0, p1 in zip(whole, *parts):
    np.testing.assert_array_equal(np.concatenate([p0['tokens'], p1['tokens']]), w['tokens'])
  with pytest.raises(ValueError, match='group_by_bucket .* needs repeat=True'):
    data.sft_batches(recs, tok, 4, repeat=False, process_index=0, process_count=1, **kw)
