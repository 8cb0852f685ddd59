"""The demo VLM's own BPE tokenizer, chat template and image processor.

The tokenizer is trained on text from the scene generator, so the whole vocabulary is a few
hundred tokens. The special tokens follow Qwen2.5-VL's names so that stock processors, vLLM and
the calibration loader treat the demo model like a real Qwen2.5-VL.
"""

from __future__ import annotations

from pathlib import Path

from mucrasp.demo.scenes import make_scene

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
VOCAB_SIZE = 640  # BPE merges stop here; the model's embedding is this size
IMAGE_PIXELS = 112 * 112  # images stay 112x112: 8x8 patches of 14, merged 2x2 into 16 tokens

# Qwen2.5-VL's template, cut down to what the demo uses: no system prompt, at most one image.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _corpus(n_scenes: int = 3000):
    for seed in range(n_scenes):
        scene = make_scene(10_000_000 + seed)  # a seed range no split uses
        yield scene.question
        yield scene.response
    yield "user assistant"


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=512,
    )


def build_processor():
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessorPil, Qwen2VLVideoProcessor

    tokenizer = build_tokenizer()
    # The PIL image processor needs no torchvision ops (the CPU build has none that load).
    image_processor = Qwen2VLImageProcessorPil(min_pixels=IMAGE_PIXELS, max_pixels=IMAGE_PIXELS)
    # The stock processor insists on a video processor; the demo never sees video.
    video_processor = Qwen2VLVideoProcessor()
    return Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )


def special_token_ids(tokenizer) -> dict[str, int]:
    return {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}


def save_processor(processor, out_dir: Path) -> None:
    processor.save_pretrained(out_dir)
