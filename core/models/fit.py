"""Recipe values that must fit the model they train: checked once the model's config.json
is read, before anything is prepared, with the usual one-paragraph error."""

from __future__ import annotations

from ftx.core.errors import FtxError
from ftx.core.models.architectures import ARCHITECTURES, ModelConfig
from ftx.core.recipe.schema import Recipe

# The linear layers of the decoder families ftx trains (transformers' module names).
LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def check_fits_model(recipe: Recipe, model: ModelConfig, source: str) -> None:
    """A LoRA rank the model's layers can hold, LoRA targets the model has, and
    max_seq_len within the model's positions."""
    method, where_model = recipe.method, f"{recipe.model.path}/config.json"
    if method.finetuning in ("lora", "qlora"):
        rank, hidden = method.lora.rank, model.hidden_size
        if hidden and rank > hidden:
            raise FtxError(
                f"method.lora.rank {rank} is larger than the model's hidden size {hidden}:"
                " the update's rank cannot exceed the layer's",
                where=f"{source}: method.lora.rank",
                fix=f"choose a rank of at most {hidden} (8 to 64 is usual)",
            )
        targets = method.lora.targets
        if targets != "all" and model.model_type in ARCHITECTURES:
            unknown = [t for t in targets if t not in LINEAR_MODULES]
            if unknown:
                raise FtxError(
                    f"method.lora.targets names {', '.join(map(repr, unknown))}, which a"
                    f" {model.model_type} model does not have",
                    where=f"{source}: method.lora.targets",
                    fix=f"choose among {', '.join(LINEAR_MODULES)}, or 'all'",
                )
    positions = model.max_position_embeddings
    if recipe.data.max_seq_len > positions:
        raise FtxError(
            f"data.max_seq_len {recipe.data.max_seq_len} is beyond the model's"
            f" {positions} positions ({where_model}: max_position_embeddings)",
            where=f"{source}: data.max_seq_len",
            fix=f"set data.max_seq_len to at most {positions}, or extend the model's positions"
            " (rope scaling) in config.json first",
        )
