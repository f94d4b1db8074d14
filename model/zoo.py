"""The default models of `model_repository/`: architecture presets, trained on JapaneseVowels.

The training options were compared over ten seeds with `python -m model.sweep`; the tables and
plots are in model/sweeps/<preset>/.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import EncoderConfig, TrainConfig


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    config: EncoderConfig
    train: TrainConfig = TrainConfig()


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "jv_bilstm_attn",
            "2-layer bidirectional LSTM with additive attention: speaker of a JapaneseVowels utterance",
            EncoderConfig(cell="lstm", hidden_size=64, num_layers=2, bidirectional=True,
                          dropout=0.2, attention="additive"),
            TrainConfig(epochs=60, keep="last", input_noise=0.3, ema=0.99,
                        offset_noise=0.3, stretch=0.2, feature_mask=0.1),
        ),
        Preset(
            "jv_bigru_attn",
            "2-layer bidirectional GRU with additive attention: speaker of a JapaneseVowels utterance",
            EncoderConfig(cell="gru", hidden_size=64, num_layers=2, bidirectional=True,
                          dropout=0.2, attention="additive"),
            TrainConfig(epochs=100, patience=40, lr=2e-3, input_noise=0.2, offset_noise=0.2, stretch=0.2),
        ),
        Preset(
            "jv_lstm_stream",
            "2-layer unidirectional LSTM with per-step logits: a running speaker prediction while streaming",
            EncoderConfig(cell="lstm", hidden_size=64, num_layers=2, bidirectional=False,
                          dropout=0.2, attention="none", step_logits=True),
            TrainConfig(epochs=60, keep="last", input_noise=0.3, ema=0.99, offset_noise=0.2, stretch=0.2),
        ),
    )
}
