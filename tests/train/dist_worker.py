"""Entry point for the multi-process tests, run from the repository root as a module:
`python -m torch.distributed.run ... -m tests.train.dist_worker CONFIG_JSON` (or
`python -m tests.train.dist_worker CONFIG_JSON` for one process).

Trains on the in-memory toy set with the real torch.distributed (gloo) path.
DIE_AFTER_ITEMS in the environment kills the run after that many item fetches
on every rank (an interrupted job).
"""
import json
import os
import sys

from dgsnet.train import TrainConfig, train_dgs, train_teacher
from dgsnet.train.distributed import from_env
from tests.train.toy_data import ToyDataset


class DiesAfter(ToyDataset):
    fetched = 0

    def __getitem__(self, i):
        DiesAfter.fetched += 1
        if DiesAfter.fetched > int(os.environ["DIE_AFTER_ITEMS"]):
            os._exit(17)  # a killed process: no cleanup, no final checkpoint
        return super().__getitem__(i)


def main():
    spec = json.loads(sys.argv[1])
    ctx = from_env()
    data = DiesAfter(48) if "DIE_AFTER_ITEMS" in os.environ else ToyDataset(48)
    fn = train_teacher if spec.pop("stage") == 1 else train_dgs
    resume = spec.pop("resume", False)
    fn(TrainConfig(**spec), data, resume=resume, ctx=ctx)


if __name__ == "__main__":
    main()
