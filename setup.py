"""megadrp: DeepSpeed-scale structured pruning of LLMs (DRPruning, DReSS)."""
from setuptools import find_packages, setup

setup(
    name="megadrp",
    version="0.1.0",
    description="Structured pruning of LLMs with distributionally robust domain reweighting, on DeepSpeed ZeRO-3",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # the repository's top-level ds_configs/ ships as megadrp/ds_configs/ (recipes name ds_configs/NAME.json from any
    # directory: megadrp.config.deepspeed_check looks in both places)
    packages=find_packages(include=["megadrp", "megadrp.*"]) + ["megadrp.ds_configs"],
    package_dir={"megadrp.ds_configs": "ds_configs"},
    include_package_data=True,
    package_data={"megadrp.ds_configs": ["*.json"]},
    install_requires=[
        "torch>=2.4,<3",
        "deepspeed>=0.19,<0.20",
        "transformers>=5.0,<6",
        "accelerate>=1.0,<2",  # transformers' HfDeepSpeedConfig and gguf loading need it
        "safetensors>=0.8,<1",
        "huggingface_hub>=2.0,<3",
        "sentencepiece>=0.2,<0.3",
        "protobuf>=5,<8",  # turning a sentencepiece model into a HF tokenizer
        "tokenizers>=0.23,<1",
        "datasets>=5.0,<6",
        "triton",  # GPU builds of torch pin their own triton: leave it free
        "wandb>=0.31,<1",
        "tqdm>=4.66,<5",
        "pyyaml>=6,<7",
        "numpy>=1.26,<3",
        "scipy>=1.11,<2",
        "matplotlib>=3.8,<4",
    ],
    extras_require={
        "dev": ["pytest>=8,<10", "pytest-timeout>=2.3,<3", "ruff>=0.6,<1"],
        "gpu": ["flash-attn>=2.6,<3"],
        "eval": ["lm-eval>=0.4.5,<0.5"],
        "demo": ["gguf>=0.19,<1", "rdata>=1.1,<2"],
    },
    entry_points={"console_scripts": ["megadrp=megadrp.cli:main"]},
    classifiers=["Programming Language :: Python :: 3", "License :: OSI Approved :: Apache Software License"],
)
