"""Security alerting: rules, their incremental evaluation, and signed webhook delivery."""

from .engine import AlertEngine
from .rules import Rule, RuleError, load_rules_file, parse_rule
from .webhooks import Delivery, WebhookDispatcher, parse_secret, sign

__all__ = [
    "AlertEngine",
    "Delivery",
    "Rule",
    "RuleError",
    "WebhookDispatcher",
    "load_rules_file",
    "parse_rule",
    "parse_secret",
    "sign",
]
