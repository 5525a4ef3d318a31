"""Package metadata: run-time ranges here; exact test versions in requirements/test.lock."""

from setuptools import find_packages, setup

setup(
    name="activity-tracker",
    version="0.2.0",
    description="Self-hosted activity tracker: REST ingest, live WebSocket feed, dashboard.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    # 3.10 is past its end of life, and its fromisoformat refuses "...Z" times.
    python_requires=">=3.11",
    packages=find_packages(include=["tracker", "tracker.*"]),
    package_data={"tracker": ["openapi.json", "static/*", "static/vendor/*"]},
    include_package_data=True,
    install_requires=[
        # 6.3+ for the WebSocket stream and ping settings the hub relies on.
        "tornado>=6.3,<7",
        # GET /metrics: the Prometheus text format and its parser-compatible naming.
        "prometheus_client>=0.20,<1",
        # Ed25519 signatures on audit checkpoints.
        "cryptography>=42",
        # --redis: the shared stream (redis.asyncio), with the C reply parser.
        "redis[hiredis]>=5.0,<9",
    ],
    extras_require={
        "test": [
            # 9.2 breaks schemathesis 4.32.5's pytest plugin ('_nodeid').
            "pytest>=8,<9.2",
            "pytest-tornado==0.8.1",
            # pytest-tornado imports pkg_resources: gone in 82, a loud UserWarning from 80.9.
            "setuptools>=70,<80.9",
            "playwright>=1.45,<2",
            "ruff>=0.6,<1",
            # tests/test_openapi.py: responses against tracker/openapi.json (2020-12 + referencing).
            "jsonschema>=4.18,<5",
            # tests/test_fuzz.py: exact, since a derandomized fuzzer's inputs follow its version.
            "schemathesis==4.32.5",
            # The reference verifier of webhook signatures, as a receiver would use it.
            "standardwebhooks>=1.0,<2",
            # An independent RFC 8785 encoder to recompute the audit chain with.
            "rfc8785>=0.1.2,<1",
        ],
    },
)
