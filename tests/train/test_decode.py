from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from signtune.models.transformer import SignTransformer
from signtune.train.decode import SYNC_EVERY, beam_search, greedy_decode

BOS, EOS = 1, 2
V = 24


def random_model(seed: int) -> SignTransformer:
    torch.manual_seed(seed)
    model = SignTransformer(
        feature_dim=8,
        vocab_size=V,
        d_model=32,
        num_heads=4,
        num_encoder_layers=2,
        num_decoder_layers=2,
        ff_mult=2,
        dropout=0.1,
        max_positions=64,
    )
    # A freshly initialised model with a tied embedding mostly repeats its input token.
    # Larger random weights and a random final-norm gain give varied sentences, some of
    # which end (EOS) before max_len and some of which don't.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2 and not name.startswith("tgt_embed"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
        model.tgt_embed.weight[EOS] /= 3
        model.decoder_norm.weight.copy_(torch.randn(32, generator=g))
    return model.eval()


def random_batch(seed: int, b: int = 5, t: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    src = torch.randn(b, t, 8, generator=g)
    lengths = torch.randint(2, t + 1, (b,), generator=g)
    mask = torch.arange(t)[None, :] < lengths[:, None]
    return src, mask


def naive_greedy(model: SignTransformer, src: torch.Tensor, mask: torch.Tensor, max_len: int) -> list[list[int]]:
    """Greedy decoding by re-running the whole teacher-forced forward for every token."""
    out = []
    with torch.no_grad():
        for row in range(src.shape[0]):
            ids = [BOS]
            for _ in range(max_len):
                logits = model(src[row : row + 1], mask[row : row + 1], torch.tensor([ids]))
                nxt = int(logits[0, -1].argmax())
                if nxt == EOS:
                    break
                ids.append(nxt)
            out.append([i for i in ids[1:] if i != BOS])
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cached_greedy_equals_full_forward_greedy(seed: int) -> None:
    model = random_model(seed)
    src, mask = random_batch(seed)
    got = greedy_decode(model, src, mask, max_len=20, bos_id=BOS, eos_id=EOS)
    assert got == naive_greedy(model, src, mask, max_len=20)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beam_one_equals_greedy(seed: int) -> None:
    model = random_model(seed)
    src, mask = random_batch(seed)
    greedy = greedy_decode(model, src, mask, max_len=20, bos_id=BOS, eos_id=EOS)
    beam = beam_search(model, src, mask, beam_size=1, max_len=20, bos_id=BOS, eos_id=EOS)
    assert beam == greedy


def test_beam_as_wide_as_the_vocabulary_is_exhaustive_over_two_steps() -> None:
    """With beam_size >= V and two steps, no hypothesis is ever pruned before the last pick."""
    model = random_model(3)
    src, mask = random_batch(3, b=2)
    beam = beam_search(model, src, mask, beam_size=V, max_len=2, bos_id=BOS, eos_id=EOS, length_penalty=0.0)
    for row in range(2):
        s, m = src[row : row + 1], mask[row : row + 1]
        with torch.no_grad():
            first = model(s, m, torch.tensor([[BOS]]))[0, -1].log_softmax(-1)
            best, best_ids = float(first[EOS]), []  # "[EOS]": the empty sentence
            for a in range(V):
                if a == EOS:
                    continue
                second = model(s, m, torch.tensor([[BOS, a]]))[0, -1].log_softmax(-1)
                x = int(second.argmax())
                if float(first[a] + second[x]) > best:
                    best, best_ids = float(first[a] + second[x]), [a] if x == EOS else [a, x]
        assert beam[row] == [i for i in best_ids if i != BOS]


def test_decoding_restores_training_mode() -> None:
    model = random_model(0).train()
    src, mask = random_batch(0)
    greedy_decode(model, src, mask, max_len=4, bos_id=BOS, eos_id=EOS)
    beam_search(model, src, mask, beam_size=2, max_len=4, bos_id=BOS, eos_id=EOS)
    assert model.training


@dataclass
class ScriptCache:
    rows: torch.Tensor
    t: int = 0

    def reorder(self, index: torch.Tensor, *, memory: bool = True) -> None:
        self.rows = self.rows[index]


class Scripted:
    """A fake model whose row ``i`` emits ``script[i]`` token by token."""

    def __init__(self, script: list[list[int]]) -> None:
        self.script = torch.tensor(script)
        self.steps = 0

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor) -> torch.Tensor:
        return src

    def start_decoding(self, memory: torch.Tensor, src_mask: torch.Tensor, max_len: int) -> ScriptCache:
        k = memory.shape[0] // self.script.shape[0]
        return ScriptCache(torch.arange(self.script.shape[0]).repeat_interleave(k))

    def decode_step(self, tokens: torch.Tensor, cache: ScriptCache) -> torch.Tensor:
        self.steps += 1
        nxt = self.script[cache.rows, min(cache.t, self.script.shape[1] - 1)]
        cache.t += 1
        return torch.nn.functional.one_hot(nxt, 10).float() * 10.0


SCRIPT = [
    [5, 6, EOS, 7, 8, 9] + [EOS] * 20,
    [5, BOS, 6, 7, EOS, 4] + [EOS] * 20,
    [EOS, 4, 4, 4, 4, 4] + [EOS] * 20,
]
EXPECTED = [[5, 6], [5, 6, 7], []]


@pytest.mark.parametrize("beam_size", [0, 1, 3])
def test_strips_bos_eos_and_after_eos_and_stops_early(beam_size: int) -> None:
    model = Scripted(SCRIPT)
    src, mask = torch.zeros(3, 4, 1), torch.ones(3, 4, dtype=torch.bool)
    if beam_size == 0:
        got = greedy_decode(model, src, mask, max_len=40, bos_id=BOS, eos_id=EOS)
    else:
        got = beam_search(model, src, mask, beam_size=beam_size, max_len=40, bos_id=BOS, eos_id=EOS)
    assert got == EXPECTED
    # All rows are done after 5 steps; the next check comes at step SYNC_EVERY.
    assert model.steps == SYNC_EVERY


def test_max_len_truncates() -> None:
    model = Scripted([[4] * 30])
    src, mask = torch.zeros(1, 2, 1), torch.ones(1, 2, dtype=torch.bool)
    assert greedy_decode(model, src, mask, max_len=3, bos_id=BOS, eos_id=EOS) == [[4, 4, 4]]
