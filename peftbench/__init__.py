"""peftbench: compare parameter-efficient fine-tuning methods with numbers you can publish."""

__version__ = "0.1.0"
