"""Tensors derived from other tensors (BN folded into a scale and shift, a weight cast or folded),
computed once and reused while their sources are unchanged.

A source is unchanged while it is the same Python object with the same version counter (bumped
by every in-place write: optimizer steps, load_state_dict; not by the batch_norm kernel's
running-statistics update, which callers see through num_batches_tracked) and the same storage (`.data =` and `module.to()` swap it without a version bump). Never
cached: a derivation that autograd must record (grad mode on and a source requiring grad), or
one from inference tensors (made under torch.inference_mode: no version counter) or tensor
subclasses. Values made
inside torch.inference_mode are made as normal tensors, so they serve calls outside it too.
"""

import weakref

import torch

from .ops._direct import PLAIN_TYPES


class DerivedTensors:
    """One derived value per first source (keyed by identity; the entry goes when that source
    is freed). `get(sources, extra, make)`: make() computed, or reused from a call with the same
    sources in the same state and the same `extra` (a tuple: dtypes, eps...)."""

    def __init__(self):
        self._entries = {}

    def get(self, sources, extra, make):
        # (straight-line code: this runs on every fused call. Callers check plain_eager()
        # where a trace could reach them: an op's body runs on real tensors only)
        grad = torch.is_grad_enabled()
        state = [extra]
        for t in sources:
            if t is None:
                state.append(None)
            elif ((grad and t.requires_grad) or type(t) not in PLAIN_TYPES
                  or t.is_inference()):
                return make()  # autograd must see it, or a subclass, or no version counter
            else:
                state.append((t._version, t.data_ptr()))
        key = id(sources[0])
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
        # when the keyed source is freed, its entry goes (and its id may be reused)
        refs[0] = weakref.ref(sources[0], lambda _, key=key: entries.pop(key, None))
        entries[key] = (refs, state, value)
        return value

    def __len__(self):
        return len(self._entries)

    def clear(self):
        self._entries.clear()


def _none():
    return None


_NONE_REF = _none  # stands in for the weak reference of an absent (None) source
