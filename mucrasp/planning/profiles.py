"""Hardware profiles: YAML files validated into `Profile`, found by name or by path."""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mucrasp.atomic_io import write_json_atomic
from mucrasp.errors import MucraspError

DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
# Measured profiles land here, and names are looked up here before the bundled ones.
USER_PROFILE_DIR_ENV = "MUCRASP_PROFILE_DIR"


class Profile(BaseModel):
    """One serving host. Memory, bandwidth and throughput are per GPU; `gpu_count` multiplies them
    (tensor parallelism assumed to split weights, KV cache and work evenly)."""

    # allow_inf_nan=False: `memory_gb: .inf` (or nan) is refused, not planned against.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str = Field(min_length=1)
    description: str = ""
    memory_gb: float = Field(gt=0)
    memory_bandwidth_gbps: float = Field(gt=0)
    dense_tflops: float = Field(gt=0)
    dtypes: list[str] = Field(min_length=1)
    gpu_count: int = Field(ge=1)
    runtime_reserve_gb: float = Field(ge=0)
    gpu_memory_utilization: float = Field(gt=0, le=1)
    shared_memory: bool = False
    # NVIDIA compute capability (8.6 for an A10G); None: an x86 CPU host. Decides which formats run.
    compute_capability: float | None = Field(None, gt=0)
    # Quantized weight formats this hardware serves (names in mucrasp.planning.weight_formats); the dense
    # ones are `dtypes`. Empty: the planner considers the dense dtype only.
    weight_formats: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> "Profile":
        unknown = [d for d in self.dtypes if d not in DTYPE_BYTES]
        if unknown:
            raise ValueError(f"dtypes: unknown dtype {unknown[0]!r} (known: {', '.join(DTYPE_BYTES)})")
        self._check_weight_formats()
        if self.runtime_reserve_gb >= self.memory_gb * self.gpu_memory_utilization:
            raise ValueError(
                "runtime_reserve_gb: leaves no memory for the model (must be below memory_gb × gpu_memory_utilization)"
            )
        return self

    def _check_weight_formats(self) -> None:
        from mucrasp.planning.weight_formats import FORMATS, QUANTIZED

        where = "an x86 CPU" if self.compute_capability is None else f"compute capability {self.compute_capability:.1f}"
        for name in self.weight_formats:
            if name not in QUANTIZED:
                kind = "a dense dtype (list it in dtypes)" if name in FORMATS else "unknown"
                raise ValueError(f"weight_formats: {name!r} is {kind} (quantized formats: {', '.join(QUANTIZED)})")
            fmt = FORMATS[name]
            if not fmt.runs_on(self.compute_capability):
                needs = (
                    "a GPU"
                    if not fmt.cpu and self.compute_capability is None
                    else (f"compute capability >= {fmt.min_compute_capability:.1f}")
                )
                raise ValueError(f"weight_formats: {name} does not run on {where} (it needs {needs})")

    @property
    def total_memory_bytes(self) -> float:
        return self.memory_gb * 1e9 * self.gpu_count

    @property
    def budget_bytes(self) -> float:
        """What the server may use for weights, KV cache, activations and the runtime together."""
        return self.total_memory_bytes * self.gpu_memory_utilization

    @property
    def bandwidth_bytes_per_s(self) -> float:
        return self.memory_bandwidth_gbps * 1e9 * self.gpu_count

    @property
    def flops_per_s(self) -> float:
        return self.dense_tflops * 1e12 * self.gpu_count

    def default_dtype(self) -> str:
        return next(d for d in ("bf16", "fp16", "fp32") if d in self.dtypes)


def _error_line(source: str, exc: ValidationError) -> str:
    """Profiles word the shared `mucrasp.validation.error_line` as "field 'NAME'" (their files' keys)."""
    from mucrasp.validation import error_line

    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"])
    if err["type"] == "missing":
        return f"profile {source}: missing field '{field}'"
    if err["type"] == "extra_forbidden":
        return f"profile {source}: unknown field '{field}'"
    field, _, message = error_line(exc).partition(": ")
    return f"profile {source}: field '{field}': {message}"


def parse_profile(data: object, source: str) -> Profile:
    if not isinstance(data, dict):
        raise MucraspError(f"profile {source}: expected a mapping of fields, got {type(data).__name__}")
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        raise MucraspError(_error_line(source, exc)) from None


def read_profile_file(path: Path) -> Profile:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise MucraspError(f"cannot read profile {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise MucraspError(f"profile {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return parse_profile(data, str(path))


def user_profile_dir() -> Path:
    return Path(os.environ.get(USER_PROFILE_DIR_ENV) or Path.home() / ".config" / "mucrasp" / "profiles")


def _bundled() -> dict[str, Path]:
    return {Path(f.name).stem: Path(str(f)) for f in files("mucrasp.profiles").iterdir() if f.name.endswith(".yaml")}


def _user() -> dict[str, Path]:
    folder = user_profile_dir()
    return {p.stem: p for p in folder.glob("*.yaml")} if folder.is_dir() else {}


def profile_paths() -> dict[str, Path]:
    """Every profile by name; a user profile shadows a bundled one of the same name."""
    return dict(sorted({**_bundled(), **_user()}.items()))


def list_profiles() -> list[str]:
    return list(profile_paths())


def check_profile_name(name: str) -> str:
    """A profile name is a file stem in the profile folder: not empty, no path separators, no '..'."""
    if not name or not name.strip():
        raise MucraspError("name: a profile name must not be empty")
    if "/" in name or "\\" in name or (os.altsep and os.altsep in name) or name in (".", "..") or ".." in name:
        raise MucraspError(f"name: {name!r} is not a profile name (no path separators or '..'; use --out for a path)")
    if name.startswith("."):
        raise MucraspError(f"name: {name!r} is not a profile name (must not start with '.')")
    return name


def load_profile(name_or_path: str | Path | Profile) -> Profile:
    """A profile by name (user folder, then bundled), by path to a YAML file, or one already loaded."""
    if isinstance(name_or_path, Profile):
        return name_or_path
    text = str(name_or_path)
    path = Path(text)
    if path.suffix in (".yaml", ".yml") or os.sep in text or path.is_file():
        if not path.is_file():
            raise MucraspError(f"profile file {path} does not exist")
        return read_profile_file(path)
    known = profile_paths()
    if text not in known:
        raise MucraspError(f"unknown profile '{text}' (known: {', '.join(known)}; or give a path to a YAML file)")
    return read_profile_file(known[text])


def write_profile(profile: Profile, path: Path) -> Path:
    # JSON is valid YAML, and write_json_atomic is the project's one atomic file writer.
    write_json_atomic(Path(path), profile.model_dump())
    return Path(path)
