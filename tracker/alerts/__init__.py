"""Security alerting: rules, their incremental evaluation, and signed webhook delivery."""

from .engine import AlertEngine
from .rules import Rule, RuleError, load_rules_file, parse_rule

__all__ = ["AlertEngine", "Rule", "RuleError", "load_rules_file", "parse_rule"]
