"""What the server must sustain: context, sequences in flight, decode target, dtype, and each prompt's image."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mucrasp.errors import MucraspError
from mucrasp.planning.profiles import DTYPE_BYTES, Profile


class Workload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_model_len: int = Field(4096, ge=1)  # context per sequence, prompt + output
    concurrency: int = Field(1, ge=1)  # sequences in flight
    target_tokens_per_s: float = Field(0.0, ge=0)  # aggregate decode; 0: no target
    dtype: str | None = None  # None: the profile's best 16-bit dtype
    # Tokens in one forward pass (vLLM's max_num_batched_tokens), which sizes the activations.
    max_batched_tokens: int = Field(8192, ge=1)
    # One image per request, for time to first token: a square side in pixels (read through the
    # model's patch and merge sizes), or its token count directly. None: text-only prompts.
    image_size: int | None = Field(None, ge=1)
    image_tokens: int | None = Field(None, ge=1)
    # Text tokens of one prompt, for time to first token; None: half the context, less the image.
    prompt_tokens: int | None = Field(None, ge=1)

    @classmethod
    def create(cls, **fields) -> "Workload":
        """Validate user-given fields into one MucraspError naming the field."""
        from mucrasp.validation import error_line

        try:
            return cls(**fields)
        except ValidationError as exc:
            field, _, message = error_line(exc).partition(": ")
            raise MucraspError(f"workload field '{field}': {message}") from None

    def dtype_for(self, profile: Profile) -> str:
        dtype = self.dtype or profile.default_dtype()
        if dtype not in DTYPE_BYTES:
            raise MucraspError(f"workload field 'dtype': unknown dtype {dtype!r} (known: {', '.join(DTYPE_BYTES)})")
        if dtype not in profile.dtypes:
            raise MucraspError(
                f"profile {profile.name} does not support dtype {dtype} (supports: {', '.join(profile.dtypes)})"
            )
        return dtype
