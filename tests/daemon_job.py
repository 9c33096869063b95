"""A training job for the daemon tests, run as its own process:
``python daemon_job.py STOP_FILE [MAX_EPOCHS]``.

It calls ``autotune.apply`` as a user would, then trains one short epoch
at a time until STOP_FILE exists, printing one JSON line per epoch: the
threads and workers it ran with and the share its client holds.
"""

import json
import os
import sys
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

import autotune
from autotune.coordinator.client import current


def main() -> None:
    stop_file = sys.argv[1]
    max_epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
    data = TensorDataset(torch.randn(512, 64), torch.randint(0, 4, (512,)))
    tuned = autotune.apply(model, DataLoader(data, batch_size=64))
    print(json.dumps({"plan_threads": tuned.plan.get("threads", "intra_op"),
                      "plan_source": tuned.plan.setting("threads", "intra_op").source.value,
                      "job": tuned.plan.get("daemon", "job")}), flush=True)
    engine = tuned.engine(torch.optim.SGD(tuned.model.parameters(), lr=0.05),
                          torch.nn.functional.cross_entropy, progress=False)
    for _ in range(max_epochs):
        if os.path.exists(stop_file):
            break
        engine.fit(tuned.loader, epochs=1)
        last = engine.history[-1]
        client = current()
        grant = client.grant if client is not None else None
        print(json.dumps({"epoch": last.epoch, "threads": last.threads,
                          "workers": last.loader_workers,
                          "grant_threads": grant.threads if grant else None,
                          "grant_cpus": len(grant.cpus) if grant else None,
                          "affinity": len(os.sched_getaffinity(0)),
                          "connected": bool(client and client.connected)}), flush=True)
        time.sleep(0.05)
    engine.close()


if __name__ == "__main__":
    main()
