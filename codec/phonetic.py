"""A phonetic codebook 1: a CTC loss that makes the codes the AR model writes carry the phonemes.

The AR model writes codebook 1 and the NAR model fills in the rest from it, so whatever
codebook 1 leaves out must be guessed. With reconstruction losses alone, codebook 1 is the
coarsest description of the spectrum, not of what is said: on the quickstart's codec, speech
decoded from codebook 1 alone doubles the ground truth's word errors. During codec training
this probe reads the phonemes of whole utterances off their quantized codebook 1 (one linear
map per frame, so each code must stand for its sound by itself) and its CTC loss flows back
through the straight-through quantizer into the encoder. Only transcripts are needed, no
alignment, so it works on any transcribed corpus. The idea is the content supervision of
NaturalSpeech 3's FACodec (phone targets for its content codes) and of SpeechTokenizer and
Mimi (semantic distillation into the first RVQ level), with CTC on the transcript in place
of a teacher model. The probe is a training aid: it is not part of the exported codec.

The probe's forward pass runs on padded whole utterances, so it runs inside `quantizer_frozen`:
the quantizer standardizes with its running statistics and leaves its codebooks alone, as in
eval mode. Left in training mode, the padding entered both: after 3000 steps of the long preset
the running standard deviation was 0.8x the latent's (0.57x in one channel; README, Codec).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchaudio.functional import edit_distance

from data.phonemes import is_phone_token

BLANK = 0


@contextmanager
def quantizer_frozen(quantizer: nn.Module) -> Iterator[None]:
    """Run `quantizer` as in eval mode inside the block (running statistics, codebooks unchanged);
    gradients still flow through its straight-through estimator. Its mode is restored after."""
    was_training = quantizer.training
    quantizer.eval()
    try:
        yield
    finally:
        quantizer.train(was_training)


class PhonemeTable:
    """Phoneme symbol <-> CTC class (1..n; 0 is the blank), built from phonemized transcripts."""

    def __init__(self, token_lists: Sequence[Sequence[str]]):
        self.symbols = sorted({t for tokens in token_lists for t in tokens if is_phone_token(t)})
        if not self.symbols:
            raise ValueError("the transcripts have no phonemes: the phonetic loss needs transcribed speech")
        self.index = {symbol: i + 1 for i, symbol in enumerate(self.symbols)}

    def __len__(self) -> int:
        return len(self.symbols)

    def encode(self, tokens: Sequence[str]) -> list[int]:
        """A phonemized transcript -> CTC targets, leaving out marks and symbols not in the table."""
        return [self.index[t] for t in tokens if t in self.index]


class PhoneticProbe(nn.Module):
    """Quantized codebook 1 [B, D, F] -> per-frame phoneme logits -> CTC loss against the transcript."""

    def __init__(self, latent_dim: int, n_phonemes: int):
        super().__init__()
        self.classify = nn.Conv1d(latent_dim, n_phonemes + 1, kernel_size=1)  # + the blank

    def forward(self, z_q: torch.Tensor, frame_lengths: torch.Tensor, targets: torch.Tensor,
                target_lengths: torch.Tensor) -> torch.Tensor:
        """The CTC loss per target phoneme, averaged over the batch."""
        log_probs = self.classify(z_q.float()).log_softmax(1).permute(2, 0, 1)  # [F, B, C]
        # zero_infinity: an utterance faster than one phoneme per frame has no CTC path; it is skipped
        return F.ctc_loss(log_probs, targets, frame_lengths, target_lengths, blank=BLANK, zero_infinity=True)

    @torch.no_grad()
    def phoneme_error_rate(self, z_q: torch.Tensor, frame_lengths: torch.Tensor, targets: torch.Tensor,
                           target_lengths: torch.Tensor) -> float:
        """Greedy CTC decoding against the targets: edit distance / target phonemes."""
        best = self.classify(z_q.float()).argmax(1)  # [B, F]
        errors = total = 0
        for b in range(best.shape[0]):
            path = best[b, : int(frame_lengths[b])].tolist()
            decoded = [c for i, c in enumerate(path) if c != BLANK and (i == 0 or c != path[i - 1])]
            reference = targets[b, : int(target_lengths[b])].tolist()
            errors += edit_distance(decoded, reference)
            total += len(reference)
        return errors / max(total, 1)

