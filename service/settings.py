"""Service settings: one pydantic-settings object (env vars `AFV_*`, `.env`), read once at start-up."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEMO_COLLECTION = Path(__file__).parent / "demo" / "cifar10-test-2000"
MiB = 1024 * 1024


class Settings(BaseSettings):
    """Everything the server reads from its environment; overridden in tests via `create_app(settings)`."""

    model_config = SettingsConfigDict(env_prefix="AFV_", env_file=".env", extra="ignore")

    # What to serve.
    model: Path | None = Field(default=None, description="Run directory; None = the bundled default model.")
    embedding: str | None = Field(
        default=None, description="bigan/bigbigan models: z | hidden | z+hidden (default z); others: unset."
    )
    readout: str | None = Field(
        default=None, description="AFV models: global | pyramid-1-2-4 (spatial pyramid); None = the model's own."
    )
    device: str = Field(default="auto", description="auto | cpu | cuda")
    precision: Literal["fp32", "mixed", "bf16"] = Field(
        default="fp32",
        description="AFV models: the gradient pass in fp32, mixed (all but the forward pass in bfloat16; distances "
        "within 0.1-0.4 %) or bf16 (faster again, but near-copy distances move by several %: not for copy detection "
        "or JND).",
    )
    data_dir: Path = Field(default=Path("./data"), description="Server state: index, JND calibration.")
    index_dir: Path | None = Field(
        default=None,
        description="Default: DATA_DIR/index-NAME for the model folder NAME (the bundled default's or "
        "--model runs/NAME), so a new default model gets a new index (created on first start; an index only "
        "opens with the model it was built with).",
    )
    demo_collection: Path | None = Field(
        default=DEMO_COLLECTION, description="Indexed once into an empty default index; None = never."
    )
    read_only: bool = Field(
        default=False,
        description="Serve an existing index without writing to it (memory-mapped, no LOCK file): reads and "
        "search only, write routes answer 403 read_only. Several replicas can serve one index folder this way.",
    )

    # Auth: write endpoints always need a key; read endpoints only if `auth_reads`.
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated; empty = generate one at start-up and log it."
    )
    auth_reads: bool = False

    # Input limits.
    max_request_bytes: int = Field(default=64 * MiB, gt=0, description="Whole request body.")
    max_image_bytes: int = Field(default=16 * MiB, gt=0, description="One encoded image.")
    max_pixels: int = Field(default=40_000_000, gt=0, description="Decoded width × height (bomb guard).")
    max_images_per_request: int = Field(default=256, gt=0, description="Set distance, batch add.")

    # Micro-batching in front of the model.
    batch_max_size: int = Field(default=32, gt=0)
    batch_max_wait_ms: float = Field(default=5.0, ge=0, le=5.0)
    torch_threads: int | None = Field(
        default=None,
        ge=1,
        description="PyTorch intra-op threads for model work; None = PyTorch's default. "
        "1 leaves the other cores to HTTP and decoding on small machines.",
    )

    model_workers: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="Model threads that run batches independently, each with its own replica of the model "
        "and an equal share of the torch threads. None = one per torch thread on CPU (at most 4), 1 on a GPU.",
    )

    model_processes: bool | None = Field(
        default=None,
        description="Run the model threads' passes in forked worker processes, one per thread, with images "
        "and outputs in shared memory, so the passes never wait for the GIL the HTTP work holds. "
        "None = yes where possible (Linux, CPU); on a GPU the threads always run them.",
    )

    warm_up: bool = Field(
        default=True,
        description="Before serving, run the model once per batch-size bucket (1, 2, 4, … batch_max_size), so "
        "that its timed kernel choices are made at start-up and not during the first requests "
        "(about 3.5 s of start-up for the bundled model on 2 cores).",
    )

    # JND: distances at or below the threshold are judged "same". None = calibrated file, else synthetic.
    jnd_threshold: float | None = Field(default=None, ge=0)

    @field_validator("model", "index_dir", "demo_collection", "embedding", "readout", mode="before")
    @classmethod
    def _empty_is_none(cls, v: object) -> object:
        """`AFV_DEMO_COLLECTION=` means none, not the current folder (Path("") is ".")."""
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, v: object) -> object:
        if isinstance(v, str):
            return [k.strip() for k in v.split(",") if k.strip()]
        return v

    @property
    def resolved_index_dir(self) -> Path:
        if self.index_dir is not None:
            return self.index_dir
        from model.extract import default_run_dir

        suffix = "".join(f"-{v}" for v in (self.embedding, self.readout) if v)
        run = self.model.resolve() if self.model is not None else default_run_dir()
        return self.data_dir / (f"index-{run.name}{suffix}" if run is not None else f"index{suffix}")

    @property
    def jnd_file(self) -> Path:
        return self.data_dir / "jnd.json"


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read once (tests pass their own to `create_app`)."""
    return Settings()
