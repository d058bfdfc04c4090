"""rag_jax: Retrieval-Augmented Generation (Lewis et al. 2020) in JAX/Flax."""

import os

# rag_jax uses transformers for tokenizers and configs only, so its advice at import that
# PyTorch is missing is noise (every command printed it). This silences all of transformers'
# advisory warnings in the process (and its children), and only if transformers is imported
# after rag_jax; a value the user set is kept.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def _skip_absent_tpu() -> None:
  """Keeps JAX from trying the TPU backend on a machine with no TPU chip.

  With libtpu installed (the `[test]` extra has it, to compile for TPU topologies), JAX's
  first operation loads libtpu to try a TPU, which fails quietly but logs an INVALID_ARGUMENT
  error about TPU_WORKER_HOSTNAMES on stderr first, at every start. JAX counts the chips the
  same way (`cloud_tpu_init`) but tries libtpu anyway. Compiling for a TPU topology
  (`rag_jax.compile`) loads libtpu on its own and is unaffected. A platform list the user set
  (JAX_PLATFORMS), JAX_FORCE_TPU_INIT, or a JAX whose backends have started is left alone.
  """
  if os.environ.get("JAX_PLATFORMS") or "JAX_FORCE_TPU_INIT" in os.environ:
    return
  # pylint: disable=import-outside-toplevel,protected-access
  from jax._src import hardware_utils
  from jax._src import xla_bridge
  if xla_bridge.backends_are_initialized():
    return
  registration = xla_bridge._backend_factories.get("tpu")
  if registration and hardware_utils.num_available_tpu_chips_and_device_id()[0] == 0:
    # A factory that makes no client fails quietly, as libtpu's does on such a machine; the
    # platform stays registered (JAX registers its TPU lowerings against it).
    registration.factory = lambda: None


_skip_absent_tpu()

# pylint: disable=wrong-import-position
from rag_jax.model import RagModel
from rag_jax.rag import RagConfig

__version__ = "0.1.0"
