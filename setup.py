from setuptools import find_packages, setup

setup(
    name="genrecast",
    version="0.1.0",
    description="Batch content-based music analysis: ingest, train, score, recommend",
    package_dir={"": "lib"},
    packages=find_packages("lib"),
    python_requires=">=3.11,<3.12",
    install_requires=[],  # pinned in requirements.txt / requirements.lock (petastorm pins the stack)
    entry_points={"console_scripts": ["genrecast=genrecast.cli:main"]},
)
