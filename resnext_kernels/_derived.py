"""Tensors derived from other tensors (BN folded into a scale and shift, a weight cast or folded),
computed once and reused while their sources are unchanged.

A cached value is reused only while
- every source is the same Python object, with the same version counter (bumped by in-place
  ops: copy_, load_state_dict, foreach optimizer steps), data pointer, shape and strides
  (`.data =` and `module.to()` swap them; the entry holds the sources' storages, so a swapped-in
  storage cannot take the old one's address while the entry lives);
- no torch.optim optimizer has stepped since (any of them, anywhere: fused optimizers such as
  Adam(fused=True) write parameters without a version bump);
- clear_caches() has not been called since (for writes no version counter sees: in-place ops
  on `.data`, numpy views, F.batch_norm(training=True) on a module's buffers);
- for CUDA tensors, the current stream is the same (the value was made on it), and no stream
  capture is under way (a CUDA graph must hold the derivation, so replays see later updates).
Never cached: a derivation that autograd must record (grad mode on and a source requiring
grad), one from inference tensors (made under torch.inference_mode: no version counter) or
tensor subclasses. Values made inside torch.inference_mode are made as normal tensors, so they
serve calls outside it too.
"""

import weakref

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from .ops._direct import PLAIN_TYPES

# Bumped by every optimizer step and by clear_caches(): part of every cache key.
_generation = 0


def clear_caches():
    """Forget every cached fold: the next call of each fused module (and of the reference
    backend) folds again. Needed only after writing parameters or BN statistics in a way no
    version counter sees (see this module's docstring)."""
    global _generation
    _generation += 1


def _optimizer_stepped(optimizer, args, kwargs):
    clear_caches()


_HOOK = register_optimizer_step_post_hook(_optimizer_stepped)


class DerivedTensors:
    """Derived values, one per first source (keyed by identity; the entry goes when that
    source is freed), or a single one (`single=True`: a module's own fold, whose sources are
    always its own parameters, so a new set of sources replaces the old entry).
    `get(sources, extra, make)`: make() computed, or reused from a call with the same sources
    in the same state and the same `extra` (a tuple: dtypes, eps...)."""

    def __init__(self, single=False):
        self._single = single
        self._entries = {}

    def get(self, sources, extra, make):
        # (straight-line code: this runs on every fused call. Callers check plain_eager()
        # where a trace could reach them: an op's body runs on real tensors only)
        grad = torch.is_grad_enabled()
        state = [_generation, extra]
        for t in sources:
            if t is None:
                state.append(None)
            elif ((grad and t.requires_grad) or type(t) not in PLAIN_TYPES
                  or t.is_inference()):
                return make()  # autograd must see it, or a subclass, or no version counter
            else:
                state.append((t._version, t.data_ptr(), t.shape, t.stride()))
        first = sources[0]
        if first.is_cuda:
            if torch.cuda.is_current_stream_capturing():
                return make()
            state.append(torch._C._cuda_getCurrentRawStream(first.device.index))
        key = 0 if self._single else id(first)
        entry = self._entries.get(key)
        if entry is not None and entry[1] == state:
            for ref, t in zip(entry[0], sources):
                if ref() is not t:
                    break
            else:
                return entry[2]
        if torch.is_inference_mode_enabled():
            # normal tensors, usable outside inference mode (no graph: grad is off here)
            with torch.inference_mode(False), torch.no_grad():
                value = make()
        else:
            value = make()
        entries = self._entries
        refs = [_NONE_REF if t is None else weakref.ref(t) for t in sources]
        if not self._single:  # when the keyed source is freed, its entry goes (its id may
            refs[0] = weakref.ref(first, lambda _, key=key: entries.pop(key, None))  # be reused)
        # The sources' storages, held while the entry lives: a `.data =` swap (no version
        # bump) frees the old storage, and a new one at the same address would pass the
        # data_ptr check; held, the address cannot come back before the entry is replaced.
        storages = [None if t is None else t.untyped_storage() for t in sources]
        entries[key] = (refs, state, value, storages)
        return value

    def clear(self):
        self._entries.clear()


def _none():
    return None


_NONE_REF = _none  # stands in for the weak reference of an absent (None) source
