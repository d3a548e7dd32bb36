"""pclc: reproduction of "Improving Adversarial Robustness via Probabilistically Compact Loss with
Logit Constraints" (Li, Li, Pan, Zhu; AAAI 2021)."""

__version__ = "0.1.0"
