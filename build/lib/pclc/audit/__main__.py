"""``python -m pclc.audit`` (Hydra app over configs/audit.yaml)."""

import hydra
from omegaconf import DictConfig

from pclc.audit.cli import audit
from pclc.config import CONFIG_DIR


@hydra.main(config_path=str(CONFIG_DIR), config_name="audit", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    from pclc.callbacks import run_job

    return run_job(audit, cfg)


if __name__ == "__main__":
    main()
