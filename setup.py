"""Package metadata: tornado at run time; the test extra adds pytest, pytest-tornado, Playwright."""

from setuptools import find_packages, setup

setup(
    name="activity-tracker",
    version="0.1.0",
    description="Self-hosted activity tracker: REST ingest, live WebSocket feed, dashboard.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["tracker", "tracker.*"]),
    package_data={"tracker": ["openapi.json", "static/*", "static/vendor/*"]},
    include_package_data=True,
    install_requires=[
        # 6.3+ for the WebSocket stream and ping settings the hub relies on.
        "tornado>=6.3,<7",
    ],
    extras_require={
        "test": [
            "pytest>=8,<10",
            "pytest-tornado==0.8.1",
            # pytest-tornado imports pkg_resources: gone in 82, a loud UserWarning from 80.9.
            "setuptools>=70,<80.9",
            "playwright>=1.45,<2",
            "ruff>=0.6,<1",
            # tests/test_openapi.py: responses against tracker/openapi.json (2020-12 + referencing).
            "jsonschema>=4.18,<5",
            # tests/test_fuzz.py: exact, since a derandomized fuzzer's inputs follow its version.
            "schemathesis==4.32.5",
        ],
    },
)
