"""Config of the BentoML service and `arm package` (params.yaml `serve:`).

Sampling defaults (cfg scale, temperature, top-k/p, max new tokens, device) come from the
`sampling:` section so the CLI, eval and the service agree; this section only holds what is
specific to serving: which model, batching, traffic limits, input limits and auth.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from arm.configbase import Strict


class BatchingConfig(Strict):
    """BentoML adaptive batching of the model service (generation, description, editing)."""

    enabled: bool = True
    max_batch_size: int = Field(16, ge=2)  # rows (images or answers) per model call
    # The dispatcher drops a queued request once its expected latency passes this (HTTP 503),
    # so it is an upper bound under overload, not a wait target.
    max_latency_ms: int = Field(30000, ge=10)


class TrafficConfig(Strict):
    timeout_s: float = Field(60.0, gt=0)  # per request; past it the client gets 504
    max_concurrency: int = Field(64, ge=1)  # in-flight requests; beyond it the client gets 429


class LimitsConfig(Strict):
    """What a request may ask for. Violations are HTTP 4xx naming the field."""

    max_image_bytes: int = Field(4 * 1024 * 1024, ge=1024)  # encoded upload, after base64 decoding
    max_image_pixels: int = Field(2048 * 2048, ge=64)  # width * height, checked before decoding
    formats: list[Literal["PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF"]] = ["PNG", "JPEG", "WEBP"]
    max_prompt_chars: int = Field(512, ge=1)  # prompts, questions and instructions
    max_n: int = Field(8, ge=1)  # images per /generate request
    max_cfg_scale: float = Field(20.0, gt=0)
    max_temperature: float = Field(5.0, gt=0)
    max_top_k: int = Field(65536, ge=1)
    max_new_tokens: int = Field(128, ge=1)  # describe answers

    @property
    def max_body_bytes(self) -> int:
        # base64 costs 4/3; the rest of a JSON body is small
        return self.max_image_bytes * 4 // 3 + 64 * 1024


class ServeConfig(Strict):
    model_tag: str = "arm:latest"  # BentoML model store tag the service loads
    model_name: str = "arm"  # `arm package` saves as <model_name>:<version>
    bento_name: str = "arm_service"
    record: str = "metrics/package.json"  # what `arm package` produced (tags, labels)
    token_env: str = "ARM_SERVE_TOKEN"  # bearer token (unset/empty = no auth); /healthz stays open
    host: str = "127.0.0.1"
    port: int = Field(3000, ge=1, le=65535)
    resources: dict[str, str | int] = {"cpu": "2"}  # BentoML resources of the model service
    torch_threads: int | None = Field(None, ge=1)  # intra-op threads of the model process
    device: str | None = None  # null = sampling.device; "auto" = cuda when the model process has a GPU
    # What a model process checks of the packaged files before loading them (arm.serve.store):
    # quick = the file list, sizes and mtimes recorded by `arm package` (a file whose mtime moved
    # is re-hashed); full = re-hash every file (minutes for 15 GB of 7b weights); off = nothing.
    verify: Literal["quick", "full", "off"] = "quick"
    batching: BatchingConfig = BatchingConfig()
    traffic: TrafficConfig = TrafficConfig()
    limits: LimitsConfig = LimitsConfig()

    @model_validator(mode="after")
    def _check(self) -> "ServeConfig":
        if ":" in self.model_name or "/" in self.model_name:
            raise ValueError(f"model_name {self.model_name!r} must not contain ':' or '/'")
        unknown = set(self.resources) - {"cpu", "memory", "gpu", "gpu_type"}
        if unknown:
            raise ValueError(f"unknown resources {sorted(unknown)}; known: cpu, memory, gpu, gpu_type")
        return self
