"""nasnet_core: the NASNet search space, genotypes, cells and networks (Zoph et al., 2018)."""

from .common import tf_guard  # noqa: F401, I001 - first: TensorFlow after triton only (see its docstring)
from .interop.convert import (
    CheckpointMismatch,
    convert_state_dict,
    load_checkpoint,
    read_state_dict,
    save_checkpoint,
)
from .interop.fuse import fuse_bn
from .interop.inference import optimize_for_inference
from .model.complexity import complexity
from .model.genotype import GENOTYPES, NASNET_A, Block, CellGenotype, Genotype, GenotypeError, get_genotype
from .model.layers import NORMS, PAD_MODES
from .model.network import NASNet
from .model.ops import COMBINERS, OP_NAMES, OPS, PAPER_OPS, FoldPair, OpContext
from .model.plan import CellSpec, NetworkPlan, make_plan
from .model.registry import MODELS, ModelConfig, create_model, get_config, list_models, register_model

__version__ = "0.1.0"

__all__ = [
    "Block", "CellGenotype", "CellSpec", "CheckpointMismatch", "COMBINERS", "FoldPair", "GENOTYPES",
    "Genotype", "GenotypeError", "MODELS", "ModelConfig", "NASNET_A", "NASNet", "NetworkPlan", "NORMS",
    "OP_NAMES", "OPS", "OpContext", "PAD_MODES", "PAPER_OPS", "complexity", "convert_state_dict",
    "create_model", "fuse_bn", "get_config", "get_genotype", "list_models", "load_checkpoint",
    "make_plan", "optimize_for_inference", "read_state_dict", "register_model", "save_checkpoint",
]
