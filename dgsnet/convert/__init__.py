"""`dgsnet convert-official`: a checkpoint of the published DGS-Net code -> a dgsnet run directory.

The published code (HorizonTEL/DGS-Net) saves `torch.save(model.state_dict())` of its
`CLIPModel` in OpenAI-CLIP naming (the layout: read.py). Its eval() may have merged the
LoRA update into the q/k/v weights before the save; this package tells which from the
frozen copy, rebuilds the trained model (base = pretrained weights, LoRA as stored) and
writes a run directory that `dgsnet.models.checkpoint.load_model` reads. Nothing here
runs code from the file: it is read with torch.load(weights_only=True).

    read.py          reading the file; stage 1 or stage 2 from its keys; the heads
    architecture.py  the open_clip architecture from the shapes; the keys and shapes expected
    lora.py          the LoRA layout (rank, targets, blocks); packing into open_clip / dgsnet naming
    verify.py        student tensors against the frozen copy; a --stage1 file against the stage-2 file
    merge.py         whether the q/k/v weights already hold the LoRA update
    write.py         the run directory, written whole or not at all
    report.py        ConversionReport and its summary
    official.py      convert_official / convert_stage1: the steps above in order
The command line (flags, warnings on stderr) is dgsnet/cli/convert.py.
"""
from dgsnet.convert.architecture import Architecture, infer_architecture
from dgsnet.convert.lora import PUBLISHED_ALPHA, LoRALayout, lora_layout
from dgsnet.convert.merge import MergeReport, detect_merge
from dgsnet.convert.official import convert_official, convert_stage1
from dgsnet.convert.read import FROZEN, STUDENT, detect_layout, read_checkpoint, with_prefix
from dgsnet.convert.report import ConversionReport
from dgsnet.convert.verify import verify_frozen

__all__ = ["FROZEN", "PUBLISHED_ALPHA", "STUDENT", "Architecture", "ConversionReport", "LoRALayout",
           "MergeReport", "convert_official", "convert_stage1", "detect_layout", "detect_merge",
           "infer_architecture", "lora_layout", "read_checkpoint", "verify_frozen", "with_prefix"]
