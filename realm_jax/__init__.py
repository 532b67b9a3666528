"""realm_jax: ReaLM (MRPV, EAAI, guided CoT distillation) in JAX/Flax."""

__version__ = "0.1.0"

from realm_jax.model import ModelConfig, forward  # noqa: E402


def load_pretrained(path: str):
  """(ModelConfig, params) from a Hugging Face folder or a .gguf file."""
  from realm_jax.model.pretrained import load_pretrained as _load
  return _load(path)


__all__ = ["ModelConfig", "forward", "load_pretrained", "__version__"]
