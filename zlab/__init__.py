"""zlab: sweep, compare and report Z-Image Turbo LoRAs through the RunComfy Model API."""

from zlab.errors import ZlabError
from zlab.request import LoRA, Request

__all__ = ["LoRA", "Request", "ZlabError"]
__version__ = "0.1.0"
