"""The ARM BentoML service: `bentoml serve services.service:ArmService` (or `arm serve`).

Two services in two processes:
  ArmService  public HTTP: the try-it page at `/`, POST /describe /generate /edit,
              GET /metadata, GET /healthz (BentoML's liveness probe, which asks
              `__is_alive__`: the model process must answer); bearer auth, body-size cap, input validation,
              concurrency limit and request timeout. It never loads the model.
  ArmModel    reached only through BentoML's local socket (JSON, arm.serve.client): loads the
              packaged model from the BentoML model store and runs adaptive batches of
              validated items.
Validation happens before batching, so a bad request never joins a batch; a request that
fails inside the model is isolated by `BatchRunner` and its batch-mates still get answers.

Configuration comes from params.yaml (`serve:` and `sampling:`), read at import in every
process; ARM_PARAMS, ARM_PRESET and ARM_SET (`key=value;...`) override it. The model tag is
`serve.model_tag` (default arm:latest).
"""

import asyncio
import logging
import secrets
import time
from pathlib import Path
from typing import Any

import bentoml
from fastapi import FastAPI
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from arm.serve.client import ModelClient, ModelServiceError
from arm.serve.errors import RequestError
from arm.serve.images import decode_image, png_base64
from arm.serve.middleware import BearerAuthMiddleware, BodyLimitMiddleware
from arm.serve.schemas import (
    SEED_MAX,
    DescribeItem,
    DescribeResponse,
    EditItem,
    EditResponse,
    GenerateItem,
    GenerateResponse,
    ModelInfo,
    Outcome,
    request_types,
)
from arm.serve.settings import load_settings

log = logging.getLogger("arm.serve")

# `arm package` builds the bento with --arg preset=... --arg model_tag=...; serving from source
# has no arguments and uses params.yaml (plus ARM_PRESET / ARM_SET).
ARGS = vars(bentoml.use_arguments())
CFG = load_settings(ARGS.get("preset"), [f"serve.model_tag={ARGS['model_tag']}"] if ARGS.get("model_tag") else [])
SERVE, SAMPLING, LIMITS = CFG.serve, CFG.sampling, CFG.serve.limits
T = request_types(LIMITS)
STATIC = Path(__file__).resolve().parent / "static"
BATCH = dict(
    batchable=SERVE.batching.enabled,
    max_batch_size=SERVE.batching.max_batch_size,
    max_latency_ms=SERVE.batching.max_latency_ms,
)


# ----------------------------------------------------------------------------- model process


@bentoml.service(
    name="arm_model",
    resources=dict(SERVE.resources),
    workers=1,
    threads=1,  # one batch at a time: torch already uses every core for one batch
    traffic={"timeout": SERVE.traffic.timeout_s * 2},  # the front enforces the user-facing timeout
)
class ArmModel:
    bento_model = bentoml.models.BentoModel(SERVE.model_tag)

    def __init__(self) -> None:
        from arm.serve import store
        from arm.serve.runner import start_worker

        # Runs once per worker process (workers=1: one per GPU at 7b); the front never loads the model.
        stored = self.bento_model
        t0 = time.perf_counter()
        self.runner = start_worker(stored, SERVE, SAMPLING)
        self.info_ = ModelInfo(
            **store.model_info(stored),
            batching=SERVE.batching.enabled,
            max_batch_size=SERVE.batching.max_batch_size,
            grids=[list(g) for g in self.runner.pipeline.layout.grids],
        )
        model = self.runner.pipeline.model
        log.info("loaded %s on %s in %s in %.1fs (batching %s)", stored.tag, model.device, model.dtype,
                 time.perf_counter() - t0, SERVE.batching.enabled)

    @bentoml.api(**BATCH)
    def generate_batch(self, items: list[GenerateItem]) -> list[Outcome]:
        return self.runner.generate(items)

    @bentoml.api(**BATCH)
    def describe_batch(self, items: list[DescribeItem]) -> list[Outcome]:
        return self.runner.describe(items)

    @bentoml.api(**BATCH)
    def edit_batch(self, items: list[EditItem]) -> list[Outcome]:
        return self.runner.edit(items)

    @bentoml.api
    async def model_info(self) -> ModelInfo:
        # async: answered on the event loop, not queued behind a running batch
        return self.info_


# ----------------------------------------------------------------------------- public process

web = FastAPI(title="ARM", docs_url=None, redoc_url=None, openapi_url=None)
web.mount("/static", StaticFiles(directory=STATIC), name="static")


def _error(e: RequestError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


def _server_error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _seed(seed: int | None) -> int:
    return secrets.randbelow(SEED_MAX + 1) if seed is None else seed


def _outcomes(raw: Any) -> list[Outcome]:
    return [o if isinstance(o, Outcome) else Outcome.model_validate(o) for o in raw]


@bentoml.service(
    name="arm",
    workers=1,
    traffic={"timeout": SERVE.traffic.timeout_s, "max_concurrency": SERVE.traffic.max_concurrency},
)
@bentoml.asgi_app(web, path="/")
class ArmService:
    model = bentoml.depends(ArmModel)

    def __init__(self) -> None:
        self._info: dict[str, Any] | None = None
        self._client: ModelClient | None = None

    @property
    def client(self) -> ModelClient:
        # created on first use, inside the server's event loop; the address is the one BentoML
        # wired for the dependency (a unix socket when both run under one `bentoml serve`)
        if self._client is None:
            self._client = ModelClient(self.model.to_async.url, timeout_s=SERVE.traffic.timeout_s * 2)
        return self._client

    @bentoml.on_shutdown
    async def _close_client(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def _run(self, route: str, items: list[Any]) -> list[Outcome] | JSONResponse:
        try:
            raw = await self.client.call(route, {"items": [it.model_dump() for it in items]})
        except ModelServiceError as e:
            log.warning("model service %s failed: %s", route, e)
            if e.status in (429, 503):
                return _server_error(503, "the model is overloaded; retry later")
            if e.status == 504:
                return _server_error(504, "the model did not answer in time")
            return _server_error(502, "the model service failed; see the server log")
        outcomes = _outcomes(raw)
        if len(outcomes) != len(items):
            return _server_error(502, f"the model service returned {len(outcomes)} results for {len(items)} inputs")
        failed = [o.error for o in outcomes if not o.ok]
        if failed:
            return _server_error(500, f"inference failed for this request: {failed[0]}")
        return outcomes

    async def _model_info(self, fresh: bool = False) -> dict[str, Any]:
        if self._info is None or fresh:
            self._info = ModelInfo.model_validate(await self.client.call("/model_info", {}, timeout_s=5)).model_dump()
        return self._info

    @bentoml.api(route="/generate")
    async def generate(
        self,
        prompt: T.Text,
        n: T.N = 1,
        cfg_scale: T.CfgScale = SAMPLING.cfg_scale,
        temperature: T.Temperature = SAMPLING.temperature,
        top_k: T.TopK = SAMPLING.top_k,
        top_p: T.TopP = SAMPLING.top_p,
        seed: T.Seed = None,
        aspect_ratio: T.AspectRatio = None,
    ) -> GenerateResponse:
        """Text to image: n PNG images (base64); image k uses seed + k. `aspect_ratio` (width:height)
        draws at the model's nearest aspect bucket; a model without buckets refuses it."""
        seed = _seed(seed)
        if aspect_ratio is not None and len((await self._model_info()).get("grids") or [[]]) < 2:
            return _server_error(400, f"aspect_ratio {aspect_ratio!r}: this model draws square images only "
                                      "(its tokenizer has no aspect buckets)")  # type: ignore[return-value]
        items = [
            GenerateItem(prompt=prompt, cfg_scale=cfg_scale, temperature=temperature, top_k=top_k, top_p=top_p,
                         seed=(seed + k) % (SEED_MAX + 1), aspect_ratio=aspect_ratio)
            for k in range(n)
        ]
        out = await self._run("/generate_batch", items)
        if isinstance(out, JSONResponse):
            return out  # type: ignore[return-value]
        return GenerateResponse(images=[o.image for o in out], seed=seed, model=(await self._model_info())["tag"])

    @bentoml.api(route="/describe")
    async def describe(
        self,
        image: T.Image,
        question: T.Question = None,
        max_new_tokens: T.MaxNewTokens = min(SAMPLING.max_new_tokens, LIMITS.max_new_tokens),
        temperature: T.Temperature = SAMPLING.text_temperature,
        seed: T.Seed = None,
    ) -> DescribeResponse:
        """Image to text: a caption, or the answer to `question`."""
        try:
            png = await asyncio.to_thread(lambda: png_base64(decode_image(image, "image", LIMITS)))
        except RequestError as e:
            return _error(e)  # type: ignore[return-value]
        if question is not None and not question.strip():
            question = None
        item = DescribeItem(image=png, question=question, max_new_tokens=max_new_tokens, temperature=temperature,
                            seed=_seed(seed))
        out = await self._run("/describe_batch", [item])
        if isinstance(out, JSONResponse):
            return out  # type: ignore[return-value]
        return DescribeResponse(text=out[0].text or "", model=(await self._model_info())["tag"])

    @bentoml.api(route="/edit")
    async def edit(
        self,
        image: T.Image,
        instruction: T.Text,
        cfg_scale: T.CfgScale = SAMPLING.cfg_scale,
        temperature: T.Temperature = SAMPLING.temperature,
        top_k: T.TopK = SAMPLING.top_k,
        top_p: T.TopP = SAMPLING.top_p,
        seed: T.Seed = None,
    ) -> EditResponse:
        """Image + instruction to image (PNG, base64)."""
        try:
            png = await asyncio.to_thread(lambda: png_base64(decode_image(image, "image", LIMITS)))
        except RequestError as e:
            return _error(e)  # type: ignore[return-value]
        seed = _seed(seed)
        item = EditItem(image=png, instruction=instruction, cfg_scale=cfg_scale, temperature=temperature,
                        top_k=top_k, top_p=top_p, seed=seed)
        out = await self._run("/edit_batch", [item])
        if isinstance(out, JSONResponse):
            return out  # type: ignore[return-value]
        return EditResponse(image=out[0].image or "", seed=seed, model=(await self._model_info())["tag"])

    # ------------------------------------------------------------------ page, health, metadata

    @web.get("/", include_in_schema=False)
    async def page(self) -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    async def __is_alive__(self) -> bool:
        # BentoML's GET /healthz (and /livez) calls this: alive = the model process answers.
        try:
            await self._model_info(fresh=True)
        except Exception as e:
            log.warning("health check: model service unavailable (%s)", type(e).__name__)
            return False
        return True

    @web.get("/metadata")
    async def metadata(self) -> JSONResponse:
        try:
            info = await self._model_info()
        except Exception as e:
            return JSONResponse({"error": f"model service unavailable ({type(e).__name__})"}, status_code=503)
        labels = info.get("labels", {})
        return JSONResponse(
            {
                "model": info["tag"],
                "created_at": info.get("created_at"),
                "data_version": labels.get("data_version"),
                "git_revision": labels.get("git_revision"),
                "labels": labels,
                "eval": info.get("eval", {}),
                "batching": {"enabled": info.get("batching"), "max_batch_size": info.get("max_batch_size")},
                "defaults": {
                    "cfg_scale": SAMPLING.cfg_scale,
                    "temperature": SAMPLING.temperature,
                    "top_k": SAMPLING.top_k,
                    "top_p": SAMPLING.top_p,
                    "max_new_tokens": min(SAMPLING.max_new_tokens, LIMITS.max_new_tokens),
                },
                "limits": LIMITS.model_dump(mode="json"),
            }
        )


# Outermost first: unauthenticated requests are refused before their body is read.
ArmService.add_asgi_middleware(BearerAuthMiddleware, token_env=SERVE.token_env)
ArmService.add_asgi_middleware(BodyLimitMiddleware, max_bytes=LIMITS.max_body_bytes)
