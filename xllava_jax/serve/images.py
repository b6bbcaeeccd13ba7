"""The bytes of a request's image: a data: URL, a local file under the allowed root, or an http(s) URL fetched
with a size limit and a timeout (or refused). Every refusal is an ApiError naming the problem."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
import urllib.parse

import httpx

from xllava_jax.serve.protocol import ApiError

PARAM = "messages.content.image_url"


@dataclasses.dataclass(frozen=True)
class ImagePolicy:
    """Where images may come from, and how big they may be."""

    root: str | None = None  # local paths are allowed only under this directory (None: no local paths)
    fetch_urls: bool = True  # fetch http(s) image URLs (False: refuse them)
    max_bytes: int = 20 << 20  # largest encoded image accepted
    fetch_timeout_s: float = 10.0  # connect + read timeout of an image URL


def too_large(size: int, policy: ImagePolicy, what: str) -> ApiError:
    """The 413 of an image over the limit."""
    return ApiError(413, f"{what} is {size} bytes, over the limit of {policy.max_bytes} bytes (--max_image_bytes)",
                    param=PARAM, code="image_too_large")


def data_url_bytes(url: str, policy: ImagePolicy) -> bytes:
    """The decoded bytes of `data:[<type>];base64,<data>`."""
    head, sep, data = url.partition(",")
    if not sep or not head.endswith(";base64"):
        raise ApiError(400, "image data: URL must be of the form data:<type>;base64,<data>", param=PARAM,
                       code="invalid_image_url")
    if len(data) * 3 // 4 > policy.max_bytes + 2:
        raise too_large(len(data) * 3 // 4, policy, "the data: URL image")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ApiError(400, f"image data: URL is not valid base64 ({e})", param=PARAM, code="invalid_base64") from e


def local_path(url: str, policy: ImagePolicy) -> str:
    """The real path of a local image (a path or file:// URL) inside the allowed root (symlinks resolved)."""
    if policy.root is None:
        raise ApiError(400, "local image paths are not allowed (start the server with --image_root DIR)",
                       param=PARAM, code="local_images_disabled")
    path = urllib.parse.unquote(urllib.parse.urlparse(url).path) if url.startswith("file://") else url
    root = os.path.realpath(policy.root)
    real = os.path.realpath(os.path.join(root, path))
    if os.path.commonpath([root, real]) != root:
        raise ApiError(400, f"image path {path!r} is outside the allowed image root", param=PARAM,
                       code="image_path_outside_root")
    if not os.path.isfile(real):
        raise ApiError(400, f"image path {path!r} is not a file under the image root", param=PARAM,
                       code="image_not_found")
    return real


def file_bytes(url: str, policy: ImagePolicy) -> bytes:
    """The bytes of a local image under the allowed root."""
    path = local_path(url, policy)
    size = os.path.getsize(path)
    if size > policy.max_bytes:
        raise too_large(size, policy, "the image file")
    with open(path, "rb") as f:
        return f.read()


async def fetched_bytes(url: str, policy: ImagePolicy) -> bytes:
    """The bytes of an http(s) image URL, read up to the size limit within the timeout."""
    if not policy.fetch_urls:
        raise ApiError(400, "http(s) image URLs are refused by this server (started with --no_image_urls); "
                            "send the image as a data: URL", param=PARAM, code="image_urls_disabled")
    data = bytearray()
    try:
        async with httpx.AsyncClient(timeout=policy.fetch_timeout_s, follow_redirects=True) as client:
            async with client.stream("GET", url) as response:
                if response.status_code != 200:
                    raise ApiError(400, f"fetching the image URL gave HTTP {response.status_code}", param=PARAM,
                                   code="image_fetch_failed")
                async for block in response.aiter_bytes():
                    data += block
                    if len(data) > policy.max_bytes:
                        raise too_large(len(data), policy, "the image at the URL (at least)")
    except httpx.HTTPError as e:
        raise ApiError(400, f"fetching the image URL failed: {type(e).__name__}: {e}", param=PARAM,
                       code="image_fetch_failed") from e
    return bytes(data)


async def image_bytes(url: str, policy: ImagePolicy) -> bytes:
    """The encoded bytes of an image_url (data:, http(s), or a local path)."""
    if url.startswith("data:"):
        return data_url_bytes(url, policy)
    scheme = urllib.parse.urlparse(url).scheme.lower()
    if scheme in ("http", "https"):
        return await fetched_bytes(url, policy)
    if scheme in ("", "file") or os.path.isabs(url):
        return file_bytes(url, policy)
    raise ApiError(400, f"unsupported image URL scheme {scheme!r} (data:, http(s), or a path)", param=PARAM,
                   code="invalid_image_url")
