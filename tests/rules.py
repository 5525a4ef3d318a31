"""The alert rule the end-to-end tests arm, as a client PUTs it (the path gives the name)."""

# Failed logins by one user: 3 within a minute fire an alert, then 5 minutes of quiet.
BRUTE_FORCE = {
    "severity": "high",
    "kind": "count",
    "match": {"action": ["login_failed"]},
    "group_by": "user_id",
    "threshold": 3,
    "window_s": 60,
    "cooldown_s": 300,
}
