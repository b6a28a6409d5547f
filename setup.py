"""Spatial smoothing: blur layers that make CNNs more accurate, calibrated and robust (Park & Kim, 2021)."""
from setuptools import find_packages, setup

setup(
    name="spatial-smoothing",
    version="0.1.0",
    description="Spatial smoothing layers, MC dropout model zoo and uncertainty evaluation for PyTorch",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["models", "models.*", "ops", "ops.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        "numpy>=1.24",
        "matplotlib>=3.7",
        "tqdm>=4.60",
        "tensorboard>=2.12",
        "scipy>=1.9",  # Student's t for intervals over a few seeds (ops.evaluate.intervals)
    ],
    extras_require={
        "train": ["timm>=0.9"],
        "cluster": ["submitit>=1.5"],
        "plots": ["seaborn>=0.12", "pandas>=1.5"],
        "notebooks": ["ipykernel>=6", "ipywidgets>=8", "nbformat>=5", "nbclient>=0.7", "papermill>=2.4"],
        "robustness": ["imagecorruptions-imaug>=1.1", "scikit-image>=0.22", "scipy>=1.10", "opencv-python>=4.8"],
        "ood": ["scikit-learn>=1.3"],  # the digits OOD set of Fashion-MNIST (ops.data.datasets.get_ood_dataset)
        "test": ["pytest>=7", "torchmetrics>=1.0", "scikit-learn>=1.3",
                 "mkdocs>=1.6", "mkdocs-material>=9.5", "mkdocstrings[python]>=0.26"],  # the docs site
    },
)
