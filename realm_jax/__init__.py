"""realm_jax: ReaLM (MRPV, EAAI, guided CoT distillation) in JAX/Flax."""

__version__ = "0.1.0"

from realm_jax.model import ModelConfig, forward  # noqa: E402
from realm_jax.model.pretrained import load_pretrained  # noqa: E402


__all__ = ["ModelConfig", "forward", "load_pretrained", "__version__"]
