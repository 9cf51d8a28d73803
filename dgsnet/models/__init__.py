"""Models: open_clip backbones, LoRA, the three DGS-Net branches, the deployable detector."""
from dgsnet.models.backbone import BackboneSpec, create_clip, embed_dim, fingerprint
from dgsnet.models.dgs_model import HEADS, LABELS, Detector, DGSNetModel
from dgsnet.models.lora import (LoRAAttention, LoRAConfig, apply_lora, count_parameters, lora_disabled,
                                lora_modules, lora_state_dict, merge_lora, strip_lora, unmerge_lora)
from dgsnet.models.text_cache import CaptionFeatureCache

__all__ = ["BackboneSpec", "CaptionFeatureCache", "Detector", "DGSNetModel", "HEADS", "LABELS", "LoRAAttention",
           "LoRAConfig", "apply_lora", "count_parameters", "create_clip", "embed_dim", "fingerprint",
           "lora_disabled", "lora_modules", "lora_state_dict", "merge_lora", "strip_lora", "unmerge_lora"]
