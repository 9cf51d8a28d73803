"""Converting a published checkpoint: a stage-2 file (and optionally its stage-1 file), or a stage-1 file
alone, checked and rebuilt as the trained model (base = pretrained weights, LoRA as stored)."""
from __future__ import annotations

import os

from dgsnet.convert.architecture import check_keys, expected_clip_shapes, infer_architecture
from dgsnet.convert.lora import PUBLISHED_ALPHA, expected_student_shapes, lora_layout, lora_tensors, packed_clip
from dgsnet.convert.merge import detect_merge
from dgsnet.convert.read import (FROZEN, STAGE1_CLIP, STAGE1_HEAD, STAGE1_LAYOUT, STAGE2_LAYOUT, STUDENT, TEACHER2,
                                 detect_layout, read_checkpoint, read_head, sha256_of, with_prefix)
from dgsnet.convert.report import ConversionReport
from dgsnet.convert.verify import compare_states, verify_frozen
from dgsnet.convert.write import prepare_out, write_run


def stage1_parts(state, source):
    """(CLIP state dict, Architecture, teacher head) of a stage-1 file, its keys and shapes checked."""
    clip = with_prefix(state, STAGE1_CLIP)
    arch = infer_architecture(clip, STAGE1_CLIP)
    shapes = expected_clip_shapes(arch)
    want = {STAGE1_CLIP + k: s for k, s in shapes.items()}
    want.update({STAGE1_HEAD + "weight": (1, arch.embed_dim), STAGE1_HEAD + "bias": (1,)})
    check_keys(state, want, source, STAGE1_LAYOUT)
    return clip, arch, read_head(state, STAGE1_HEAD, arch.embed_dim, source)


def convert_stage1(path: str, out: str) -> ConversionReport:
    """A stage-1 file alone -> a stage-1 run (frozen CLIP + teacher probe; only teacher_head is trained)."""
    from dgsnet.models import LoRAConfig

    state = read_checkpoint(path)
    if detect_layout(state, path) != "stage1":
        raise ValueError(f"{path} is not a stage-1 file; convert_official() converts stage-2 files")
    clip, arch, head = stage1_parts(state, path)
    prepare_out(out)
    lora_cfg = LoRAConfig()  # published settings; stage-1 runs leave LoRA at its (B = 0) start
    converted = {"source": os.path.basename(path), "sha256": sha256_of(path), "layout": "stage1",
                 "merged": None, "as_published_test": False, "mismatches": []}
    write_run(out, clip, arch, lora_cfg, 1, {f"teacher_head.{k}": v for k, v in head.items()}, converted, path)
    return ConversionReport(source=path, out=os.path.abspath(out), stage=1, architecture=arch.describe())


def convert_official(path: str, out: str, stage1: str | None = None, lora_alpha: float = PUBLISHED_ALPHA,
                     as_published_test: bool = False) -> ConversionReport:
    """A published checkpoint -> a dgsnet run directory at `out`; see the docstring of dgsnet.convert."""
    from dgsnet.models import LoRAConfig

    prepare_out(out)  # before the (large) checkpoint is read: a taken --out fails in a second, not minutes
    state = read_checkpoint(path)
    layout = detect_layout(state, path)
    if layout == "stage1":
        if stage1 or as_published_test:
            raise ValueError(f"{path} is a stage-1 file (teacher probe): --stage1 and --as-published-test "
                             "apply to a stage-2 file")
        return convert_stage1(path, out)
    if not lora_alpha > 0:
        raise ValueError(f"--lora-alpha {lora_alpha}: must be > 0")

    student, frozen = with_prefix(state, STUDENT), with_prefix(state, FROZEN)
    arch = infer_architecture(frozen, FROZEN)
    clip_shapes = expected_clip_shapes(arch)
    lora = lora_layout(student, arch, path)
    want = {FROZEN + k: s for k, s in clip_shapes.items()}
    want.update({STUDENT + k: s for k, s in expected_student_shapes(clip_shapes, arch, lora).items()})
    for prefix in (TEACHER2, "img_fc.", "text_fc."):
        want.update({prefix + "weight": (1, arch.embed_dim), prefix + "bias": (1,)})
    check_keys(state, want, path, STAGE2_LAYOUT)
    prepare_out(out)

    merge = detect_merge(student, frozen, lora, arch.vision_width, lora_alpha, path)
    mismatches = verify_frozen(student, frozen, lora, arch.vision_width)
    report_warnings = []
    if mismatches:
        report_warnings.append(
            f"{len(mismatches)} student tensors that the published code keeps frozen differ from the frozen "
            f"copy ({', '.join(m['name'] for m in mismatches[:10])}{', ...' if len(mismatches) > 10 else ''}); "
            + ("--as-published-test uses the student's tensors" if as_published_test
               else "the frozen copy's are used"))
    if merge.merged is not True:
        report_warnings.append(f"the file's q/k/v weights do not include the LoRA update, so they do not show "
                               f"alpha: the run assumes --lora-alpha {lora_alpha:g} (published: 6) unchecked")

    stage1_mismatches: list[dict] | None = None
    stage1_record = None
    teacher = read_head(state, TEACHER2, arch.embed_dim, path)
    if stage1:
        s1 = read_checkpoint(stage1)
        if detect_layout(s1, stage1) != "stage1":
            raise ValueError(f"--stage1 {stage1} is not a stage-1 file; expected {STAGE1_LAYOUT}")
        s1_clip, _, s1_head = stage1_parts(s1, stage1)
        stage1_mismatches = [{**m, "name": STAGE1_CLIP + m["name"]}  # named as in the stage-1 file
                             for m in compare_states(frozen, s1_clip, "the stage-2 frozen copy", "the stage-1 file")]
        stage1_mismatches += [{**m, "name": "img_frozen_fc." + m["name"]}
                              for m in compare_states(teacher, s1_head, "the stage-2 teacher head",
                                                      "the stage-1 file")]
        stage1_record = {"source": os.path.basename(stage1), "sha256": sha256_of(stage1),
                         "mismatches": stage1_mismatches}
        if stage1_mismatches:
            report_warnings.append(
                f"--stage1 {stage1} differs from the stage-2 file's frozen copy / teacher head in "
                f"{len(stage1_mismatches)} tensors ({', '.join(m['name'] for m in stage1_mismatches[:10])}); "
                "the stage-2 file's are used")

    base = packed_clip(student, lora) if as_published_test else frozen
    lora_cfg = LoRAConfig(rank=lora.rank, alpha=float(lora_alpha), dropout=0.8, targets=lora.targets,
                          blocks=lora.config_blocks(arch.vision_layers), scaling="sqrt", dropout_masks="separate")
    trained = dict(lora_tensors(student, lora))  # keys already visual.transformer.resblocks.N.attn.*
    for name, prefix, src in (("student_head", "img_fc.", state), ("text_head", "text_fc.", state)):
        trained.update({f"{name}.{k}": v for k, v in read_head(src, prefix, arch.embed_dim, path).items()})
    trained.update({f"teacher_head.{k}": v for k, v in teacher.items()})
    converted = {"source": os.path.basename(path), "sha256": sha256_of(path), "layout": "stage2",
                 "merged": merge.merged, "merge": merge.describe(), "undecidable_layers": merge.undecidable,
                 "as_published_test": as_published_test,
                 "base": "student weights as stored" if as_published_test else "frozen copy (pretrained)",
                 "lora_alpha": float(lora_alpha), "alpha_checked": merge.merged is True,
                 "mismatches": mismatches}
    if stage1_record:
        converted["stage1"] = stage1_record
    write_run(out, base, arch, lora_cfg, 2, trained, converted, path)
    return ConversionReport(
        source=path, out=os.path.abspath(out), stage=2, architecture=arch.describe(), lora=lora_cfg.to_dict(),
        merged=merge.merged, merge=merge.describe(), as_published_test=as_published_test,
        mismatches=mismatches, stage1_mismatches=stage1_mismatches, warnings=report_warnings)
