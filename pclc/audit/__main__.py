"""``python -m pclc.audit`` (Hydra app over configs/audit.yaml)."""

import hydra
from omegaconf import DictConfig

from pclc.audit.cli import audit


@hydra.main(config_path="../../configs", config_name="audit", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    from pclc.callbacks import run_job

    return run_job(audit, cfg)


if __name__ == "__main__":
    main()
