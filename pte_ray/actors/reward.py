"""RewardWorker: the math verifier with killable per-item timeouts."""

from __future__ import annotations

from pte_ray.actors import metrics
from pte_ray.config import Config
from pte_ray.records import ScoreRequest, Scores, WorkerInfo
from pte_ray.rl.rewards import Verifier
from pte_ray.rl.verdict import STATUSES


class RewardWorker:
    def __init__(self, cfg: Config, worker_id: int) -> None:
        self.worker_id = str(worker_id)
        self.verifier = Verifier(cfg.reward)  # the section is a RewardConfig
        self.verifier.warm_up()  # a cold verifier would make the first step's items slow
        metrics.zero("timeouts", "reward", worker=self.worker_id)  # exported from the start
        for status in STATUSES:
            metrics.zero("verifier_status", "reward", worker=self.worker_id, status=status)

    def ready(self) -> WorkerInfo:
        return WorkerInfo.here("reward", self.worker_id)

    def score(self, req: ScoreRequest) -> Scores:
        scored = self.verifier.score_batch(req.completions, req.answers)
        counts = self.verifier.take_counts()
        metrics.count("timeouts", counts.get("timeout", 0), "reward", worker=self.worker_id)
        for status, n in counts.items():
            metrics.count("verifier_status", n, "reward", worker=self.worker_id, status=status)
        return Scores([r for r, _ in scored], [s for _, s in scored])

    def close(self) -> None:
        self.verifier.close()
