"""The MoE runtime: a byte-level MoE language model, its token streams, pretraining, and `MoERuntime`."""

from moe_runtime.checkpoint import (
    CheckpointError,
    cache_dir_problem,
    default_cache_dir,
    load_model,
    read_checkpoint,
    save_checkpoint,
)
from moe_runtime.config import EXPERT_WIDTH_RATIOS, MoEConfig, widths_from_ratios
from moe_runtime.model import ModelOutput, MoETransformer
from moe_runtime.muon import Muon, newton_schulz
from moe_runtime.pretrain import (
    PretrainConfig,
    checkpoint_path,
    ensure_pretrained,
    evaluate_loss,
    load_or_pretrain,
    pretrain,
)
from moe_runtime.runtime import ControlAction, MoERuntime, StepReport, forward_work
from moe_runtime.streams import BUILTIN_DOMAINS, Corpus, DomainSchedule, TokenStream, corpus_hash, load_corpus
from moe_runtime.ttt import TTTEngine
from moe_runtime.ttt_config import (
    DEFAULT_CHUNK_TOKENS,
    DEFAULT_FREQUENCY_TOKENS,
    TTTConfig,
    TTTUpdate,
)
from moe_runtime.ttt_config import METHODS as TTT_METHODS

__all__ = [
    "BUILTIN_DOMAINS",
    "DEFAULT_CHUNK_TOKENS",
    "DEFAULT_FREQUENCY_TOKENS",
    "EXPERT_WIDTH_RATIOS",
    "CheckpointError",
    "ControlAction",
    "Corpus",
    "DomainSchedule",
    "MoEConfig",
    "MoERuntime",
    "MoETransformer",
    "Muon",
    "ModelOutput",
    "PretrainConfig",
    "StepReport",
    "TTTConfig",
    "TTTEngine",
    "TTTUpdate",
    "TTT_METHODS",
    "TokenStream",
    "cache_dir_problem",
    "checkpoint_path",
    "corpus_hash",
    "default_cache_dir",
    "ensure_pretrained",
    "evaluate_loss",
    "forward_work",
    "load_corpus",
    "load_model",
    "load_or_pretrain",
    "newton_schulz",
    "pretrain",
    "read_checkpoint",
    "save_checkpoint",
    "widths_from_ratios",
]
