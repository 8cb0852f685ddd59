"""Qwen2-VL: the language model sits at `model.model.language_model`; the vision tower is left alone."""

from mucrasp.adapters.base import ArchitectureAdapter
from mucrasp.adapters.registry import register_adapter


@register_adapter
class Qwen2VLAdapter(ArchitectureAdapter):
    architecture = "Qwen2VLForConditionalGeneration"
    is_vision_language = True
    stock_config_honours_head_dim = False  # the text attention derives head_dim from the head count

    def text_config(self, config):
        return config.text_config

    def language_model(self, model):
        return model.model.language_model
