"""Qwen2.5-VL: laid out like Qwen2-VL (windowed vision attention changes nothing in the decoder)."""

from mucrasp.adapters.qwen2_vl import Qwen2VLAdapter
from mucrasp.adapters.registry import register_adapter


@register_adapter
class Qwen2_5_VLAdapter(Qwen2VLAdapter):
    architecture = "Qwen2_5_VLForConditionalGeneration"
