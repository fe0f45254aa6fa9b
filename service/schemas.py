"""Request and response models of the HTTP API.

Image fields (`ImageBytes`) arrive as multipart file uploads or, in JSON bodies, as base64 strings
(a `data:image/...;base64,` prefix is accepted). `metadata` is a JSON object (in multipart: a JSON
string). Both content types are documented in the OpenAPI schema by `service.inputs.openapi_body`.
Numbers and booleans are strict in JSON (`"k": "5"` and `"k": true` are rejected); multipart form
fields are text and are converted by `service.inputs.parse_body`.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    WithJsonSchema,
    model_validator,
)

MAX_METADATA_CHARS = 16_384


def _b64_or_bytes(v: Any) -> Any:
    if isinstance(v, str):
        s = v.strip()
        if s.startswith("data:") and "," in s:
            s = s.split(",", 1)[1]
        try:
            return base64.b64decode(s, validate=True)
        except (binascii.Error, ValueError):
            try:
                return base64.urlsafe_b64decode(s)
            except (binascii.Error, ValueError):
                raise ValueError("not valid base64") from None
    return v


def _json_object(v: Any) -> Any:
    if isinstance(v, (str, bytes)):
        try:
            v = json.loads(v)
        except ValueError as e:
            raise ValueError(f"not valid JSON ({e}); send a JSON object") from None
    if v is not None:
        if not isinstance(v, dict):
            raise ValueError(f"must be a JSON object, not {type(v).__name__}")
        if len(json.dumps(v)) > MAX_METADATA_CHARS:
            raise ValueError(f"metadata is larger than {MAX_METADATA_CHARS} characters of JSON")
    return v


ImageBytes = Annotated[bytes, BeforeValidator(_b64_or_bytes), WithJsonSchema({"type": "string", "format": "binary"})]
Metadata = Annotated[
    dict[str, Any] | None,
    BeforeValidator(_json_object),
    WithJsonSchema({"type": "object", "additionalProperties": True}),
]
Where = Annotated[
    dict[str, Any] | None,
    BeforeValidator(_json_object),
    WithJsonSchema(
        {
            "type": "object",
            "additionalProperties": True,
            "description": "Metadata filter: every key must equal the value.",
        }
    ),
]
ImageId = Annotated[str, Field(min_length=1, max_length=200)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")
    upload_names: ClassVar[dict[str, str]] = {}  # multipart: field ← the file names of this image field


# ---- requests (multipart or JSON) --------------------------------------------------------------


class DistanceRequest(_Strict):
    image_a: ImageBytes
    image_b: ImageBytes


class TwoAFCRequest(_Strict):
    ref: ImageBytes
    p0: ImageBytes
    p1: ImageBytes


class JNDRequest(DistanceRequest):
    pass


class SetDistanceRequest(_Strict):
    images_a: list[ImageBytes] = Field(min_length=1)
    images_b: list[ImageBytes] = Field(min_length=1)


class EmbedRequest(_Strict):
    image: ImageBytes


class SearchRequest(_Strict):
    image: ImageBytes | None = Field(None, description="Query image (or give `id`).")
    id: ImageId | None = Field(None, description="Search with an already-indexed image.")
    k: StrictInt = Field(10, ge=1, le=1000)
    where: Where = None
    rerank: StrictBool = Field(False, description="Re-rank candidates with exact distances.")
    mirror: StrictBool = Field(
        True,
        description="Image queries: also search the query's mirror image (horizontal "
        "flip) and keep each item's nearer distance, so mirrored copies are found.",
    )

    @model_validator(mode="after")
    def _one_query(self) -> SearchRequest:
        if (self.image is None) == (self.id is None):
            raise ValueError("give exactly one of `image` or `id`")
        return self


class SketchRequest(_Strict):
    image: ImageBytes | None = Field(None, description="Query image (or give `id`).")
    id: ImageId | None = Field(None, description="An indexed image: its stored vector.")
    mirror: StrictBool = Field(True, description="Image queries: also the sketch of the mirror image, as search uses.")

    @model_validator(mode="after")
    def _one_query(self) -> SketchRequest:
        if (self.image is None) == (self.id is None):
            raise ValueError("give exactly one of `image` or `id`")
        return self


class AddImageRequest(_Strict):
    upload_names: ClassVar[dict[str, str]] = {"name": "image"}
    image: ImageBytes
    name: str | None = Field(
        None,
        max_length=1000,
        description="Default (multipart): the upload's file name, without its path, at most 255 characters.",
    )
    metadata: Metadata = None


class BatchAddRequest(_Strict):
    upload_names: ClassVar[dict[str, str]] = {"names": "images"}
    images: list[ImageBytes] = Field(min_length=1)
    names: list[Annotated[str, Field(max_length=1000)] | None] | None = Field(
        None, description="One per image, in order. Default (multipart): the uploads' file names."
    )
    metadata: list[Metadata] | None = Field(None, description="One object per image, in order.")

    @model_validator(mode="after")
    def _aligned(self) -> BatchAddRequest:
        for field in ("names", "metadata"):
            got = getattr(self, field)
            if got is not None and len(got) != len(self.images):
                raise ValueError(f"`{field}` has {len(got)} entries for {len(self.images)} images")
        return self


# ---- JSON-only requests -----------------------------------------------------------------------


class LabelledPair(_Strict):
    """One judged pair: either a precomputed `distance` or the two images (base64)."""

    distance: StrictFloat | None = Field(None, ge=0, allow_inf_nan=False)
    image_a: ImageBytes | None = None
    image_b: ImageBytes | None = None
    same: Annotated[StrictFloat, Field(ge=0, le=1)] | StrictBool = Field(
        description="1/true = judged the same; a fraction of judges works."
    )

    @model_validator(mode="after")
    def _one_source(self) -> LabelledPair:
        has_images = self.image_a is not None and self.image_b is not None
        if (self.distance is None) == (not has_images):
            raise ValueError("give either `distance` or both `image_a` and `image_b`")
        return self


class JNDCalibrateRequest(_Strict):
    pairs: list[LabelledPair] = Field(min_length=2, max_length=10_000)
    save: StrictBool = Field(True, description="Persist the threshold (DATA_DIR/jnd.json).")


# A vector's entries: bounded, so that squared distances stay finite in float32.
VectorEntry = Annotated[float, Field(ge=-1e12, le=1e12, allow_inf_nan=False)]


class VectorSearchRequest(_Strict):
    vectors: list[list[VectorEntry]] = Field(
        min_length=1,
        max_length=16,
        description="Sketches of one query (e.g. from /v1/search:sketch); each item's nearest distance to any counts.",
    )
    k: StrictInt = Field(10, ge=1, le=1000)
    where: Where = None
    rerank: StrictBool = Field(False, description="Re-rank candidates with exact distances.")

    @model_validator(mode="after")
    def _one_length(self) -> VectorSearchRequest:
        if len({len(v) for v in self.vectors}) > 1:
            raise ValueError("all `vectors` must have the same length")
        return self


# ---- responses ----------------------------------------------------------------------------------


class DistanceResponse(BaseModel):
    distance: float
    layers: dict[str, float] = Field(description="Each block's share of the squared distance.")
    regions: dict[str, list[list[float]]] | None = Field(
        None,
        description="Spatial read-outs: each image cell's share of the squared distance, per pyramid "
        "level ('2x2': rows of shares); absent for whole-image read-outs.",
    )


class TwoAFCResponse(BaseModel):
    d0: float
    d1: float
    choice: Literal[0, 1] = Field(description="0 if p0 is closer to ref, else 1 (ties → 0).")


class JNDThreshold(BaseModel):
    threshold: float
    source: Literal["settings", "calibrated", "synthetic"]
    n_pairs: int = 0
    accuracy: float | None = None


class JNDResponse(BaseModel):
    distance: float
    same: bool = Field(description="distance ≤ threshold: judged not noticeably different.")
    threshold: float
    threshold_source: str


class SetDistanceResponse(BaseModel):
    distance: float
    n_a: int
    n_b: int


class EmbedResponse(BaseModel):
    vector: list[float]
    norm: float
    dim: int


class SearchHit(BaseModel):
    id: str
    distance: float
    name: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class SearchResponse(BaseModel):
    results: list[SearchHit]


class SketchResponse(BaseModel):
    vectors: list[list[float]] = Field(description="The vectors /v1/search searches with for this query.")


class ImageAdded(BaseModel):
    id: str
    duplicate: bool = Field(False, description="The same bytes were already indexed under this id.")


class ImageInfo(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    name: str | None = None
    sha256: str | None = None
    size: int | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class ErrorBody(BaseModel):
    code: str
    message: str
    detail: Any = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class BatchItem(BaseModel):
    index: int
    id: str | None = None
    duplicate: bool = False
    error: ErrorBody | None = None


class BatchAddResponse(BaseModel):
    results: list[BatchItem]
    added: int
    failed: int


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Ready(BaseModel):
    ready: bool
    model: str
    model_hash: str
    method: str = Field("afv", description="What the model computes: afv | bigan | bigbigan | gfmn-moments.")
    dim: int | None = Field(None, description="Length of the model's vectors (AFV: its parameter count).")
    device: str
    index_images: int | None = None
    writable: bool = Field(True, description="False while index writes fail, or when serving read-only.")
    read_only: bool = Field(False, description="Started with --read-only (AFV_READ_ONLY): write routes answer 403.")
    write_error: str | None = Field(None, description="Why the last index write failed; cleared by the next success.")


class Deleted(BaseModel):
    id: str
    deleted: bool = True
