"""Pretrained EnCodec (through `transformers.EncodecModel`) behind Echo's codec interface.

With it, Echo can skip codec training: VALL-E's own setting is EnCodec 24 kHz at 6 kbps,
8 codebooks of 1024 entries at 75 frames per second.

    codec = EncodecCodec.from_pretrained("facebook/encodec_24khz")  # or a local directory
    codes = codec.encode(wav)    # [B, 1, T] -> [B, K, F], F = ceil(T / hop_length)
    wav = codec.decode(codes)    # [B, K, F] -> [B, 1, F * hop_length]

A directory written by `save_pretrained` holds transformers' own `config.json` and
`model.safetensors`, plus `echo_codec.json`, which records the chosen bandwidth.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from codec.interface import Codec, CodecIdentity, config_hash
from data.pretrained import (CONFIG_FILE, WEIGHTS_FILE, read_config_dict, resolve_pretrained, write_directory,
                             write_json)

try:
    from transformers import EncodecConfig, EncodecModel
except ImportError as err:  # transformers is only needed for this backend
    raise ImportError("the EnCodec backend needs transformers: pip install 'transformers>=4.56'") from err

ECHO_CODEC_FILE = "echo_codec.json"
ENCODEC_FILES = (CONFIG_FILE, WEIGHTS_FILE, ECHO_CODEC_FILE)  # what a hub snapshot needs
DEFAULT_MAX_BANDWIDTH = 6.0  # kbps; VALL-E's setting, 8 codebooks at 24 kHz

# The EncodecConfig fields that shape the token space and the decoder. A list of what to
# keep rather than of what to drop: transformers adds and renames bookkeeping keys between
# versions (torch_dtype -> dtype, return_dict, ...), and those must not change the identity.
ARCHITECTURE_KEYS = (
    "target_bandwidths",
    "sampling_rate",
    "audio_channels",
    "normalize",
    "chunk_length_s",
    "overlap",
    "hidden_size",
    "num_filters",
    "num_residual_layers",
    "upsampling_ratios",
    "norm_type",
    "kernel_size",
    "last_kernel_size",
    "residual_kernel_size",
    "dilation_growth_rate",
    "use_causal_conv",
    "pad_mode",
    "compress",
    "num_lstm_layers",
    "trim_right_ratio",
    "codebook_size",
    "codebook_dim",
    "use_conv_shortcut",
)


class EncodecCodec(Codec):
    """A frozen, pretrained EnCodec used at one bandwidth, i.e. with a fixed number of codebooks."""

    def __init__(self, model: EncodecModel, bandwidth: float | None = None, n_q: int | None = None) -> None:
        """Wrap `model`; give `bandwidth` (kbps) or `n_q` (codebooks), or neither for the largest ≤ 6 kbps."""
        super().__init__()
        check_supported(model.config)
        self.model = model.eval()
        self.bandwidth = resolve_bandwidth(model, bandwidth, n_q)
        self._n_q = bandwidth_to_n_q(model, self.bandwidth)

    # ------------------------------------------------------------------ loading and saving

    @classmethod
    def from_pretrained(
        cls,
        path_or_hub_id: str | Path,
        bandwidth: float | None = None,
        n_q: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> "EncodecCodec":
        """Load EnCodec from a directory (written by `save_pretrained`) or a hub id such as facebook/encodec_24khz.

        Without `bandwidth` and `n_q`, a directory's recorded bandwidth is used, else the largest ≤ 6 kbps.
        """
        directory = resolve_pretrained(path_or_hub_id, ENCODEC_FILES, what="EnCodec")
        model_type = read_config_dict(directory, what="EnCodec").get("model_type")
        if model_type != "encodec":
            raise ValueError(f"{directory / CONFIG_FILE} describes a {model_type!r} model; "
                             f"{cls.__name__} loads 'encodec' models")
        if bandwidth is None and n_q is None:
            bandwidth = read_recorded_bandwidth(directory)
        try:
            config = EncodecConfig.from_pretrained(str(directory))
            check_supported(config)  # before the weights are read
            model = EncodecModel.from_pretrained(str(directory), config=config, **({"dtype": dtype} if dtype else {}))
        except OSError as err:
            raise OSError(f"{directory} is not an EnCodec directory written by save_pretrained: {err}") from err
        if device is not None:
            model = model.to(device)
        return cls(model, bandwidth=bandwidth, n_q=n_q)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write transformers' config.json + model.safetensors and echo_codec.json (the bandwidth)."""

        def write(tmp: Path) -> None:
            self.model.save_pretrained(tmp)  # safetensors: transformers' default (its only format from 5)
            write_json(tmp / ECHO_CODEC_FILE, {"bandwidth": self.bandwidth, "n_q": self.n_q})

        return write_directory(directory, write)

    # ------------------------------------------------------------------ what it is

    @property
    def sample_rate(self) -> int:
        return int(self.model.config.sampling_rate)

    @property
    def hop_length(self) -> int:
        return int(self.model.config.hop_length)

    @property
    def frame_rate(self) -> float:
        # Exact, unlike EncodecConfig.frame_rate, which rounds up to an int.
        return self.sample_rate / self.hop_length

    @property
    def n_q(self) -> int:
        return self._n_q

    @property
    def codebook_size(self) -> int:
        return int(self.model.config.codebook_size)

    @property
    def identity(self) -> CodecIdentity:
        return CodecIdentity(
            name="encodec",
            config_hash=config_hash({**architecture_config(self.model.config), "bandwidth": self.bandwidth}),
            sample_rate=self.sample_rate,
            frame_rate=self.frame_rate,
            n_q=self.n_q,
            codebook_size=self.codebook_size,
        )

    def train(self, mode: bool = True) -> "EncodecCodec":
        """Keep the wrapped EnCodec in eval mode whatever a parent module asks: this backend is frozen."""
        super().train(mode)
        self.model.eval()
        return self

    def extra_repr(self) -> str:
        return f"bandwidth={self.bandwidth} kbps, n_q={self.n_q}, sample_rate={self.sample_rate}"

    # ------------------------------------------------------------------ encode and decode

    @torch.no_grad()
    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """Mono audio [B, 1, T] at `sample_rate` -> codes LongTensor [B, n_q, ceil(T / hop_length)]."""
        self.check_wav(wav)
        weight = next(self.model.parameters())
        wav = wav.to(device=weight.device, dtype=weight.dtype)
        # No padding mask: [B, 1, T] carries no lengths, and the mask only matters for
        # normalize=True or chunked configs, which check_supported refuses.
        encoded = self.model.encode(wav, bandwidth=self.bandwidth, return_dict=True)
        codes = encoded.audio_codes  # [n_chunks = 1, B, K, F]
        if codes.shape[0] != 1 or codes.shape[2] != self.n_q:
            raise RuntimeError(
                f"EncodecModel.encode returned codes of shape {tuple(codes.shape)}; expected "
                f"[1, B, {self.n_q}, F] (one chunk, {self.n_q} codebooks at {self.bandwidth} kbps)"
            )
        return codes[0].long()

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B, K, F] with K ≤ n_q (the first K codebooks) -> float32 audio [B, 1, F * hop_length]."""
        self.check_codes(codes)
        if codes.is_floating_point() or codes.is_complex():
            raise TypeError(f"codec.decode expects integer codes, got {codes.dtype}")
        if codes.shape[-1] == 0:
            raise ValueError("codec.decode got no frames (F = 0)")
        codes = codes.to(device=next(self.model.parameters()).device, dtype=torch.long)
        # One chunk, and no scale since normalize=False.
        decoded = self.model.decode(codes[None], [None], return_dict=True)
        return decoded.audio_values.float()

    @torch.no_grad()
    def decode_expected(self, probabilities: torch.Tensor) -> torch.Tensor:
        """probabilities [B, K, F, C] -> float32 audio [B, 1, F * hop_length] from each codebook's expected vector."""
        self.check_probabilities(probabilities)
        if probabilities.shape[2] == 0:
            raise ValueError("codec.decode_expected got no frames (F = 0)")
        layers = self.model.quantizer.layers
        weight = layers[0].codebook.embed
        probabilities = probabilities.to(device=weight.device, dtype=weight.dtype)
        latent = sum(probabilities[:, k] @ layers[k].codebook.embed for k in range(probabilities.shape[1]))
        return self.model.decoder(latent.transpose(1, 2)).float()  # as EnCodec decodes one chunk, without scale


# ---------------------------------------------------------------------- helpers


def check_supported(config: EncodecConfig) -> None:
    """Refuse EnCodec configs whose output is not one mono [B, K, F] token stream (e.g. encodec_48khz)."""
    problems = []
    if config.audio_channels != 1:
        problems.append(f"audio_channels={config.audio_channels} (Echo's codec interface is mono)")
    if config.chunk_length_s is not None:
        problems.append(
            f"chunk_length_s={config.chunk_length_s} (it encodes overlapping chunks, whose codes do not "
            "join into one frame sequence)"
        )
    if config.normalize:
        problems.append("normalize=True (each chunk's loudness scale is needed to decode, and codes cannot carry it)")
    if problems:
        raise ValueError(
            "this EnCodec configuration is not supported as an Echo codec: "
            + "; ".join(problems)
            + ". Use a mono model without chunking or normalisation, such as facebook/encodec_24khz."
        )


def bandwidth_to_n_q(model: EncodecModel, bandwidth: float) -> int:
    """Codebooks used at `bandwidth` kbps: bandwidth * 1000 / (frame_rate * log2(codebook_size))."""
    # The quantizer's own rule, so that n_q always matches what model.encode returns.
    return int(model.quantizer.get_num_quantizers_for_bandwidth(bandwidth))


def resolve_bandwidth(model: EncodecModel, bandwidth: float | None, n_q: int | None) -> float:
    """Pick one of the model's target bandwidths from `bandwidth`, `n_q`, or neither (the largest ≤ 6 kbps)."""
    allowed = [float(b) for b in model.config.target_bandwidths]
    options = ", ".join(f"{b:g} kbps (n_q={bandwidth_to_n_q(model, b)})" for b in allowed)
    if bandwidth is not None:
        if float(bandwidth) not in allowed:
            raise ValueError(f"bandwidth {bandwidth} kbps is not one this EnCodec supports; choose one of: {options}")
        chosen = float(bandwidth)
        if n_q is not None and bandwidth_to_n_q(model, chosen) != n_q:
            raise ValueError(
                f"bandwidth {chosen:g} kbps means n_q={bandwidth_to_n_q(model, chosen)}, not n_q={n_q}; "
                f"give one of them. Options: {options}"
            )
        return chosen
    if n_q is not None:
        matching = [b for b in allowed if bandwidth_to_n_q(model, b) == n_q]
        if not matching:
            raise ValueError(f"n_q={n_q} is not one this EnCodec supports; choose one of: {options}")
        return matching[0]
    at_most_default = [b for b in allowed if b <= DEFAULT_MAX_BANDWIDTH]
    return max(at_most_default) if at_most_default else min(allowed)


def read_recorded_bandwidth(directory: Path) -> float | None:
    """The bandwidth that `save_pretrained` recorded in `directory`, or None if it has no echo_codec.json."""
    record_file = directory / ECHO_CODEC_FILE
    if not record_file.is_file():
        return None
    record = json.loads(record_file.read_text())
    if not isinstance(record.get("bandwidth"), (int, float)):
        raise ValueError(f"{record_file} has no numeric 'bandwidth'; was it written by EncodecCodec.save_pretrained?")
    return float(record["bandwidth"])


def architecture_config(config: EncodecConfig) -> dict[str, Any]:
    """The fields of `config` that shape the token space and the decoder, as JSON-ready values."""
    arch = {key: getattr(config, key) for key in ARCHITECTURE_KEYS}
    arch["target_bandwidths"] = [float(b) for b in arch["target_bandwidths"]]  # 6 and 6.0 hash alike
    arch["upsampling_ratios"] = list(arch["upsampling_ratios"])
    return arch
