"""Request field types, internal batch items and responses of the service.

Field types are built from the configured limits so that BentoML's schema validation
(HTTP 400 naming the field) enforces them before a request reaches the model. JSON types are
strict: "3" is not an int and true is not a number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, Optional

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from arm.serve.config import LimitsConfig

SEED_MAX = 2**31 - 1


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or only whitespace")
    return value


def _no_control_chars(value: str) -> str:
    bad = [c for c in value if ord(c) < 32 and c not in "\t\n\r"]
    if bad:
        raise ValueError(f"contains control characters {sorted({hex(ord(c)) for c in bad})}")
    return value


# Syntax only; the model maps a ratio to its nearest aspect bucket (arm.tokenizer.buckets).
ASPECT_RATIO_PATTERN = r"^[0-9]{1,4}(\.[0-9]{1,3})?:[0-9]{1,4}(\.[0-9]{1,3})?$"


@dataclass(frozen=True)
class RequestTypes:
    """Annotated field types for one set of limits (use as parameter annotations)."""

    Text: Any  # prompt / instruction: required, non-blank
    Question: Any  # optional text
    Image: Any  # base64 or data URL; decoded and checked by arm.serve.images
    N: Any
    CfgScale: Any
    Temperature: Any
    TopK: Any
    TopP: Any
    Seed: Any
    MaxNewTokens: Any
    AspectRatio: Any  # width:height, e.g. "4:3"; None: the model's default (square) grid


def request_types(limits: LimitsConfig) -> RequestTypes:
    text = Annotated[
        str,
        Field(strict=True, min_length=1, max_length=limits.max_prompt_chars),
        AfterValidator(_not_blank),
        AfterValidator(_no_control_chars),
    ]
    return RequestTypes(
        Text=text,
        Question=Optional[
            Annotated[str, Field(strict=True, max_length=limits.max_prompt_chars), AfterValidator(_no_control_chars)]
        ],
        Image=Annotated[
            str,
            Field(strict=True, min_length=1, max_length=limits.max_body_bytes, description="base64 image or data URL"),
        ],
        N=Annotated[int, Field(strict=True, ge=1, le=limits.max_n)],
        CfgScale=Annotated[float, Field(strict=True, ge=0.0, le=limits.max_cfg_scale, allow_inf_nan=False)],
        Temperature=Annotated[float, Field(strict=True, ge=0.0, le=limits.max_temperature, allow_inf_nan=False)],
        TopK=Annotated[int, Field(strict=True, ge=0, le=limits.max_top_k)],
        TopP=Annotated[float, Field(strict=True, gt=0.0, le=1.0, allow_inf_nan=False)],
        Seed=Optional[Annotated[int, Field(strict=True, ge=0, le=SEED_MAX)]],
        MaxNewTokens=Annotated[int, Field(strict=True, ge=1, le=limits.max_new_tokens)],
        AspectRatio=Optional[Annotated[str, Field(strict=True, max_length=16, pattern=ASPECT_RATIO_PATTERN,
                                                  description="width:height, e.g. 4:3")]],
    )


# ----------------------------------------------------------------------------- model service


class _Item(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Sampling(_Item):
    cfg_scale: float
    temperature: float
    top_k: int
    top_p: float
    seed: int


class GenerateItem(Sampling):
    """One image to generate (a request for n images is n items with seeds seed..seed+n-1)."""

    prompt: str
    aspect_ratio: Optional[str] = None


class EditItem(Sampling):
    image: str  # PNG, base64, already checked by the front service
    instruction: str


class DescribeItem(_Item):
    image: str
    question: Optional[str] = None
    max_new_tokens: int
    temperature: float
    seed: int


class Outcome(_Item):
    """Per item: the result or why it failed; one failing item never fails its batch-mates."""

    ok: bool
    text: Optional[str] = None
    image: Optional[str] = None  # PNG, base64
    error: Optional[str] = None


class ModelInfo(BaseModel):
    """What the model process reports about the packaged model it loaded."""

    model_config = ConfigDict(extra="forbid")

    tag: str
    created_at: Optional[str] = None
    labels: dict[str, str] = {}
    eval: dict[str, Any] = {}
    manifest: dict[str, Any] = {}
    batching: bool
    max_batch_size: int
    grids: list[list[int]] = []  # the (h, w) token grids it draws; more than one: it takes aspect_ratio


# ----------------------------------------------------------------------------- public responses


class GenerateResponse(BaseModel):
    images: list[str] = Field(description="PNG images, base64")
    media_type: Literal["image/png"] = "image/png"
    seed: int
    model: str


class EditResponse(BaseModel):
    image: str = Field(description="PNG image, base64")
    media_type: Literal["image/png"] = "image/png"
    seed: int
    model: str


class DescribeResponse(BaseModel):
    text: str
    model: str
