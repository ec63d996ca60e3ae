"""Prometheus metrics of the incremental trainer (no torch: the dashboard test imports this)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from semirec.core.metrics import FRESHNESS_BUCKETS, LATENCY_BUCKETS, REGISTRY

SAMPLES = Counter("semirec_trainer_samples", "Training samples consumed (new event ids).",
                  registry=REGISTRY)
SAMPLES_BAD = Counter("semirec_trainer_samples_malformed", "Samples that broke the contract "
                      "(dead-lettered), by reason.", ["reason"], registry=REGISTRY)
TRAINED = Counter("semirec_trainer_samples_trained", "New samples trained into a candidate.",
                  registry=REGISTRY)
ROUNDS = Counter("semirec_trainer_rounds", "Candidate rounds by outcome.", ["result"],
                 registry=REGISTRY)
REJECTIONS = Counter("semirec_trainer_rejections", "Rejected candidates by reason.", ["reason"],
                     registry=REGISTRY)
EVAL = Gauge("semirec_trainer_last_eval", "Last held-out evaluation.", ["model", "metric"],
             registry=REGISTRY)
SERVING = Gauge("semirec_trainer_serving_version", "Ranker version the trainer last promoted.",
                registry=REGISTRY)
ACTIVE = Gauge("semirec_trainer_active", "1 = this trainer holds the lease and trains; 0 = it "
               "waits for it (another trainer is active).", registry=REGISTRY)
EPOCH = Gauge("semirec_trainer_lease_epoch", "Fencing token of the lease this trainer holds.",
              registry=REGISTRY)
FRESHNESS = Histogram("semirec_trainer_model_freshness_seconds",
                      "Kafka timestamp of a watch to a served model trained on it.",
                      buckets=FRESHNESS_BUCKETS, registry=REGISTRY)
ROUND_SECONDS = Histogram("semirec_trainer_round_seconds", "Fine-tune + evaluation of a round.",
                          buckets=LATENCY_BUCKETS, registry=REGISTRY)
PROMOTION_SECONDS = Histogram("semirec_trainer_promotion_seconds",
                              "Triton load of a new version until it answers.",
                              buckets=LATENCY_BUCKETS, registry=REGISTRY)
