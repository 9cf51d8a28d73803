"""Training flags that argparse alone gets wrong: list flags, and which stage reads which flag.

Plain argparse with a custom action, on purpose: the command line and the torch-free runtime must
not grow dependencies (jsonargparse or tyro would add them). Standard library only.
"""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass

#: The dgsnet command of each training stage.
STAGE_COMMANDS = {1: "train-teacher", 2: "train"}

#: Config keys only one stage reads (dgsnet/train/trainer.py); the other stage's command does not
#: offer them as flags. A --config file may hold both: a stage ignores the other's keys.
STAGE_ONLY = {
    1: ("teacher_lr", "teacher_epochs"),
    # stage 1 trains the teacher head on LoRA-free features: LoRA, the objective, FSDP, the caption
    # cache and the teacher run are stage 2's
    2: ("lr", "epochs", "surgery", "variant", "lam", "eps", "backend", "layer_refresh", "layer_eps",
        "fsdp", "teacher", "caption_cache", "lora_rank", "lora_alpha", "lora_scaling", "lora_dropout",
        "lora_dropout_masks", "lora_targets", "lora_blocks"),
}


@dataclass(frozen=True)
class ListSpec:
    item: type  # float, int or str
    count: int | None = None  # exactly this many values, or any number >= 1
    choices: tuple[str, ...] | None = None
    keyword: str | None = None  # a single word that stands for the whole list ("all")
    forms: str = ""  # the accepted forms, for --help and errors
    metavar: str = "VALUE"


LIST_FLAGS = {
    "betas": ListSpec(float, count=2, metavar="BETA", forms="two numbers: --betas 0.9 0.999 or --betas 0.9,0.999"),
    "lora_targets": ListSpec(str, choices=("q", "k", "v"), metavar="QKV", forms="--lora-targets q v or --lora-targets q,v"),
    "lora_blocks": ListSpec(int, keyword="all", metavar="BLOCK", forms="all, or block indices (negative from the end): "
                                                      "--lora-blocks -2,-1 or --lora-blocks -2 -1"),
}


def flag_name(key: str) -> str:
    return "--" + key.replace("_", "-")


def parse_list(key: str, values: list[str]):
    """The flag's values (split at spaces and commas) as the config field wants them; ValueError
    (without the flag's name) for a wrong count or value."""
    spec = LIST_FLAGS[key]
    items = [v.strip() for value in values for v in str(value).split(",") if v.strip()]
    if not items:
        raise ValueError(f"needs a value ({spec.forms})")
    if spec.keyword is not None and spec.keyword in items:
        if items != [spec.keyword]:
            raise ValueError(f"{spec.keyword!r} stands alone, got {' '.join(items)} ({spec.forms})")
        return spec.keyword
    if spec.count is not None and len(items) != spec.count:
        raise ValueError(f"takes {spec.count} values, got {len(items)}: {' '.join(items)} ({spec.forms})")
    parsed = []
    for item in items:
        try:
            parsed.append(spec.item(item))
        except ValueError:
            noun = {float: "a number", int: "an integer"}[spec.item]
            raise ValueError(f"{item!r} is not {noun} ({spec.forms})") from None
        if spec.choices is not None and item not in spec.choices:
            raise ValueError(f"{item!r} is not one of {', '.join(spec.choices)} ({spec.forms})")
    if spec.count is None and len(set(parsed)) != len(parsed):
        raise ValueError(f"a value is repeated: {' '.join(items)}")
    if spec.keyword is not None:  # lora_blocks is kept as its config-file string, "-2,-1"
        return ",".join(str(p) for p in parsed)
    return parsed


class ListAction(argparse.Action):
    """nargs='+' whose values may also be comma-separated; a bad value is argparse's usage error."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs="+", metavar=LIST_FLAGS[dest].metavar, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            setattr(namespace, self.dest, parse_list(self.dest, values))
        except ValueError as exc:
            raise argparse.ArgumentError(self, str(exc)) from None


class OtherStageFlag(argparse.Action):
    """A flag of the other training stage: hidden from --help, and an 'unrecognized' error naming
    the command that has it (argparse would otherwise say only 'unrecognized arguments')."""

    def __init__(self, option_strings, dest, owner: str = "", **kwargs):
        self.owner = owner
        super().__init__(option_strings, dest, nargs="*", help=argparse.SUPPRESS, default=None, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        raise argparse.ArgumentError(None, f"unrecognized arguments: {option_string} ({option_string} is a "
                                           f"flag of dgsnet {self.owner}; a --config file may hold it for both)")


# a value token that starts with '-': a negative number or a list of them ("-2,-1", "-.5")
_NEGATIVE = re.compile(r"^-(\d|\.\d)[\d.,eE+\- ]*$")


def join_list_values(argv: list[str]) -> list[str]:
    """`--lora-blocks -2,-1` as `--lora-blocks=-2,-1`: argparse takes '-2,-1' for an option.

    The values after a list flag, up to the next option, are joined with commas into one token."""
    names = {flag_name(k) for k in LIST_FLAGS}
    out, i = [], 0
    while i < len(argv):
        token = argv[i]
        if token == "--":
            out.extend(argv[i:])
            break
        if token in names:
            values, j = [], i + 1
            while j < len(argv) and argv[j] != "--" and (not argv[j].startswith("-") or _NEGATIVE.match(argv[j])):
                values.append(argv[j])
                j += 1
            if values:
                out.append(f"{token}={','.join(values)}")
                i = j
                continue
        out.append(token)
        i += 1
    return out
