"""moonpipe: pipelined serving of Moondream-class vision-language models."""

__version__ = "0.1.0"
