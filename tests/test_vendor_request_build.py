"""What the proxy's Groq client sends is what the SDK's own client sends (llm/providers/groq.py
VendorAsyncGroq, post_options): the same URL, body and headers on every try, its headers built
once per retry count and copied; and its request ids (llm/request_ids.py) are random UUIDs, none
repeated, none shared with a forked worker."""

from __future__ import annotations

import asyncio
import os
import threading
import uuid

import groq
import httpx
from groq._base_client import get_platform
from groq._models import FinalRequestOptions

from llm import request_ids
from llm.providers import ChatRequest
from llm.providers.chat_completions import options
from llm.providers.groq import MERGED_HEADERS_KEPT, GroqProvider, chat_completions_url, post_options

REQUEST = ChatRequest(prompt="What is the capital of France?", model="llama-3.1-8b-instant", max_tokens=5)


def built(client, make_options, retries_taken: int):
    request = client._build_request(make_options(), retries_taken=retries_taken)
    return str(request.url), request.method, request.content, sorted(request.headers.multi_items())


def test_the_vendor_client_builds_the_sdks_request_on_every_try():
    async def compare() -> None:
        ours = GroqProvider.make_async_client("gsk_test", "http://127.0.0.1:9/", 7.5, 2)
        stock = groq.AsyncGroq(api_key="gsk_test", base_url="http://127.0.0.1:9/", timeout=7.5, max_retries=2)
        ours._platform = stock._platform = get_platform()  # what `request` sets before building
        url = chat_completions_url(str(ours.base_url))
        try:
            for retries_taken in (0, 1, 2, 0):
                mine = built(ours, lambda: post_options(url, options(REQUEST)), retries_taken)
                theirs = built(
                    stock,
                    lambda: FinalRequestOptions.construct(
                        method="post", url="/openai/v1/chat/completions", json_data=options(REQUEST)
                    ),
                    retries_taken,
                )
                assert mine == theirs
                headers = dict(mine[3])
                assert headers["x-stainless-retry-count"] == str(retries_taken)
                assert headers["user-agent"] == f"AsyncGroq/Python {groq.__version__}"
                assert headers["authorization"] == "Bearer gsk_test"
            # A caller changing the headers it got changes nothing in the next call's.
            first = ours._build_headers(post_options(url, {}))
            first["x-stainless-retry-count"] = "99"
            assert ours._build_headers(post_options(url, {}))["x-stainless-retry-count"] == "0"
            # A call with headers of its own is built the SDK's way, with them.
            custom = post_options(url, {})
            custom.headers = {"X-Extra": "1"}
            assert ours._build_headers(custom)["x-extra"] == "1"
        finally:
            await ours.close()
            await stock.close()

    asyncio.run(compare())


def test_the_vendor_http_client_builds_httpx_own_request():
    """VendorHttpClient.build_request (the client's headers merged once per set of call headers) makes
    what httpx's build_request makes, byte for byte and in order, for the SDK's calls and for
    anything else (a relative URL, query parameters, cookies), and keeps a bounded set of merges."""

    async def compare() -> None:
        client = GroqProvider.make_async_client("gsk_test", "http://127.0.0.1:9/", 7.5, 2)
        http = client._client
        url = chat_completions_url(str(client.base_url))
        body = b'{"model":"m","messages":[]}'
        calls = [
            {"method": "post", "url": url, "headers": client._build_headers(post_options(url, {}), retries_taken=n)}
            | {"content": body, "timeout": timeout}
            for n in (0, 1, 2, 0)
            for timeout in (7.5, httpx.Timeout(3.0, connect=1.0), httpx.USE_CLIENT_DEFAULT)
        ]
        calls += [
            {"method": "post", "url": "/openai/v1/chat/completions", "headers": {"X-A": "1"}, "content": body},
            {"method": "get", "url": url, "headers": httpx.Headers({"X-A": "1"}), "params": {"q": "a b"}},
            {"method": "post", "url": url, "headers": httpx.Headers({"X-A": "1"}), "cookies": {"c": "1"}},
            {"method": "post", "url": url, "headers": httpx.Headers({"X-A": "2"}), "json": {"a": 1}},
        ]
        try:
            for call in calls:
                ours = http.build_request(**call)
                theirs = httpx.AsyncClient.build_request(http, **call)
                assert (ours.method, ours.url, ours.headers.raw, ours.content, ours.extensions) == (
                    theirs.method,
                    theirs.url,
                    theirs.headers.raw,
                    theirs.content,
                    theirs.extensions,
                )
            for index in range(MERGED_HEADERS_KEPT + 5):
                http.build_request("post", url, headers=httpx.Headers({"X-N": str(index)}), content=body)
            assert 0 < len(http._merged_headers) <= MERGED_HEADERS_KEPT
        finally:
            await client.close()

    asyncio.run(compare())


def test_post_options_are_fresh_copies():
    first = post_options("http://a/x", {"model": "m"})
    second = post_options("http://a/y", {"model": "n"})
    assert (first.url, first.json_data, first.method) == ("http://a/x", {"model": "m"}, "post")
    assert (second.url, second.json_data) == ("http://a/y", {"model": "n"})


def test_request_ids_are_random_version_4_uuids_never_repeated():
    count = 3 * request_ids.UUIDS_PER_READ + 7  # across several reads of random bytes
    ids = [request_ids.uuid4() for _ in range(count)]
    assert len(set(ids)) == count
    assert all(isinstance(value, uuid.UUID) and value.version == 4 for value in ids)
    assert all(value.variant == uuid.RFC_4122 for value in ids)
    # Every bit but the 6 fixed ones varies (a constant bit would show as all-0 or all-1).
    variable = ~((0xF << 76) | (0x3 << 62)) & ((1 << 128) - 1)
    ones = [0] * 128
    for value in ids:
        for bit in range(128):
            ones[bit] += value.int >> bit & 1
    assert all(0 < ones[bit] < count for bit in range(128) if variable >> bit & 1)


def test_request_ids_from_threads_are_distinct():
    found: list[uuid.UUID] = []
    lock = threading.Lock()

    def take() -> None:
        mine = [request_ids.uuid4() for _ in range(500)]
        with lock:
            found.extend(mine)

    threads = [threading.Thread(target=take) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(found) == len(set(found)) == 2000


def test_a_forked_process_does_not_repeat_its_parents_ids():
    request_ids.uuid4()  # the parent holds unread random bytes
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, then exit at once
        os.close(reader)
        os.write(writer, b"".join(request_ids.uuid4().bytes for _ in range(8)))
        os._exit(0)
    os.close(writer)
    os.waitpid(pid, 0)
    data = os.read(reader, 16 * 8)
    os.close(reader)
    child = {data[index : index + 16] for index in range(0, len(data), 16)}
    parent = {request_ids.uuid4().bytes for _ in range(8)}
    assert len(child) == 8 and not child & parent
