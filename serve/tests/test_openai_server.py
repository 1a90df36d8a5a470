"""The server on a free loopback port, driven by the real `openai` client (lab-small on the CPU).

Each output is checked against LLM.generate on a second copy of the model with the same
prompt ids and SamplingParams (fp32 on a CPU: identical tokens, as bench.serving's gate
requires of the engine), so a server that drops, reorders, re-tokenizes or mis-seeds a
request fails here.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from pathlib import Path

import httpx2 as httpx
import openai
import pytest
import torch

import model as lab_model
from scheduler import LLM, SamplingParams
from serve import openai_server
from serve.chat_template import ChatTemplate, ChatTemplateError, load_chat_template
from serve.openai_server import ServerThread, make_app

MODEL = "lab-small"
PROMPT = "Once upon a time"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def server():
    app = make_app(MODEL, device="cpu", max_num_seqs=64, max_queue=256)
    with ServerThread(app) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def ref():
    return LLM(lab_model.load(MODEL, device="cpu"), _tokenizer(), max_num_seqs=64)


def _tokenizer():
    from model.tokenizer import load_tokenizer
    from model.loader import checkpoint_dir

    return load_tokenizer(checkpoint_dir(MODEL))


def _engine(server):
    return server.app.state.engine.engine


def _wait_idle(server, timeout=20.0):
    """Until the engine holds no request and no KV block (aborts are applied by the engine thread)."""
    eng = _engine(server)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if eng.blocks_in_use() == 0 and not eng.scheduler.requests:
            return
        time.sleep(0.05)
    raise AssertionError(f"still {eng.blocks_in_use()} KV blocks and {len(eng.scheduler.requests)} requests held")


def _generate(ref, ids, **kw):
    return ref.generate([ids], SamplingParams(**kw))[0]


# ---------------------------------------------------------------------------- basics
def test_models_health_metrics(server, client):
    ids = [m.id for m in client.models.list().data]
    assert ids == [MODEL]
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    text = httpx.get(server.url + "/metrics").text
    for name in ("lab_time_to_first_token_seconds_bucket", "lab_time_per_output_token_seconds_bucket",
                 "lab_e2e_request_latency_seconds_bucket", "lab_num_requests_running", "lab_num_requests_waiting",
                 "lab_num_requests_preempted", "lab_kv_cache_usage_ratio", "lab_generation_tokens_total",
                 "lab_prompt_tokens_total"):
        assert name in text, name


@pytest.mark.parametrize("sampling", [dict(temperature=0.0), dict(temperature=0.9, top_p=0.9, top_k=40, seed=7)])
def test_completion_equals_generate(server, client, ref, sampling):
    """Non-streamed and streamed text and token ids equal LLM.generate's; usage counts them."""
    tok = ref.engine.tokenizer
    ids = tok.encode(PROMPT, bos=True)
    want = _generate(ref, ids, max_tokens=24, **sampling)
    extra = {"return_token_ids": True}
    if "top_k" in sampling:
        extra["top_k"] = sampling["top_k"]
    args = {k: v for k, v in sampling.items() if k != "top_k"}
    r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, extra_body=extra, **args)
    c = r.choices[0]
    assert c.token_ids == want.token_ids and c.text == want.text
    assert c.finish_reason == ("stop" if want.finish_reason == "stop" else "length")
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(ids), len(want.token_ids))
    assert r.usage.total_tokens == len(ids) + len(want.token_ids)

    chunks = list(client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, stream=True,
                                            stream_options={"include_usage": True}, extra_body=extra, **args))
    text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
    got_ids = [t for ch in chunks if ch.choices for t in ch.choices[0].token_ids]
    assert text == want.text and got_ids == want.token_ids
    assert len([ch for ch in chunks if ch.choices]) > 3  # streamed, not one chunk at the end
    assert chunks[-1].usage.completion_tokens == len(want.token_ids)
    assert chunks[-1].usage.prompt_tokens == len(ids)


def test_token_id_prompt_and_batch_of_prompts(client, ref):
    prompts = [[0, 42, 17, 99], [0, 5, 6]]
    r = client.completions.create(model=MODEL, prompt=prompts, max_tokens=6, temperature=0,
                                  extra_body={"return_token_ids": True, "ignore_eos": True})
    outs = ref.generate(prompts, SamplingParams(max_tokens=6, ignore_eos=True))
    assert [c.index for c in r.choices] == [0, 1]
    assert [c.token_ids for c in r.choices] == [o.token_ids for o in outs]
    assert r.usage.prompt_tokens == 7 and r.usage.completion_tokens == 12


def test_chat_equals_generate(server, client, ref):
    messages = [{"role": "system", "content": "You are a poet."}, {"role": "user", "content": "Tell me of the sea."}]
    template = load_chat_template(ref.engine.tokenizer, None)
    assert template.name == "plain"
    ids = template.render(messages)
    want = _generate(ref, ids, max_tokens=20, temperature=0.0)
    r = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=20, temperature=0)
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == want.text
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == len(want.token_ids)
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=20, temperature=0,
                                                 stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == want.text
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_n_choices_seeded_and_reproducible(client, ref):
    """n = 3 with seed s: choice j equals LLM.generate with seed s + j; the same request again is identical."""
    ids = ref.engine.tokenizer.encode(PROMPT, bos=True)
    kw = dict(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=1.0, seed=1234, n=3,
              extra_body={"return_token_ids": True})
    r1 = client.completions.create(**kw)
    r2 = client.completions.create(**kw)
    assert [c.text for c in r1.choices] == [c.text for c in r2.choices]
    for j, c in enumerate(r1.choices):
        assert c.index == j
        assert c.token_ids == _generate(ref, ids, max_tokens=12, temperature=1.0, seed=1234 + j).token_ids
    assert len({tuple(c.token_ids) for c in r1.choices}) > 1  # the seeds differ, so do the samples
    streamed = {}
    for ch in client.completions.create(stream=True, **kw):
        for c in ch.choices:
            streamed[c.index] = streamed.get(c.index, "") + c.text
    assert [streamed[j] for j in range(3)] == [c.text for c in r1.choices]
    assert r1.usage.completion_tokens == sum(len(c.token_ids) for c in r1.choices)


def test_stop_string(client, ref):
    ids = ref.engine.tokenizer.encode(PROMPT, bos=True)
    full = _generate(ref, ids, max_tokens=24, temperature=0.0, ignore_eos=True).text
    stop = full[len(full) // 2:len(full) // 2 + 3]
    assert stop.strip() and stop in full
    want = full[:full.index(stop)]
    r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, temperature=0, stop=[stop, "zzzz"],
                                  extra_body={"ignore_eos": True})
    assert r.choices[0].text == want and r.choices[0].finish_reason == "stop"
    chunks = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, temperature=0, stop=stop,
                                       stream=True, extra_body={"ignore_eos": True})
    assert "".join(ch.choices[0].text for ch in chunks) == want


def test_logprobs_match_the_model(client, ref):
    """Completion logprobs equal log_softmax of a no-cache forward of a third model copy (fp32, 1e-4)."""
    r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=3,
                                  extra_body={"return_token_ids": True})
    c = r.choices[0]
    ids = ref.engine.tokenizer.encode(PROMPT, bos=True)
    m = lab_model.load(MODEL, device="cpu")
    with torch.inference_mode():
        logits = m(torch.tensor([ids + c.token_ids[:-1]]))[0, len(ids) - 1:]
    lp = torch.log_softmax(logits.float(), -1)
    got = torch.tensor(c.logprobs.token_logprobs)
    want = lp[torch.arange(len(c.token_ids)), torch.tensor(c.token_ids)]
    assert not (got - want).abs().max() > 1e-4
    assert all(len(t) == 3 for t in c.logprobs.top_logprobs)
    # greedy: the sampled token is the most likely one
    assert all(abs(max(t.values()) - v) < 1e-6 for t, v in zip(c.logprobs.top_logprobs, c.logprobs.token_logprobs))
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4,
                                          temperature=0, logprobs=True, top_logprobs=2)
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens and all(len(e.top_logprobs) == 2 for e in content)
    from scheduler.params import SamplingParamsError

    for bad in (21, -1, True, 2.0):
        with pytest.raises(SamplingParamsError, match="logprobs"):
            SamplingParams(logprobs=bad)


def test_64_concurrent_streams(server, ref):
    """64 streams at once, each equal to its LLM.generate output."""
    tok = ref.engine.tokenizer
    prompts = [f"{PROMPT} number {i}" for i in range(64)]
    want = ref.generate([tok.encode(p, bos=True) for p in prompts], SamplingParams(max_tokens=8, ignore_eos=True))
    peak = []

    async def one(aclient, p):
        stream = await aclient.completions.create(model=MODEL, prompt=p, max_tokens=8, temperature=0, stream=True,
                                                  extra_body={"ignore_eos": True})
        text = ""
        async for ch in stream:
            text += ch.choices[0].text
            peak.append(len(_engine(server).scheduler.running))
        return text

    async def run():
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=120) as ac:
            return await asyncio.gather(*(one(ac, p) for p in prompts))

    got = asyncio.run(run())
    assert got == [o.text for o in want]
    assert max(peak) > 16  # they really ran together
    _wait_idle(server)


# ---------------------------------------------------------------------------- disconnects
def test_disconnect_aborts_and_frees_blocks(server, client):
    eng = _engine(server)
    stream = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=400, temperature=0, stream=True,
                                       extra_body={"ignore_eos": True})
    for i, _ in enumerate(stream):
        if i == 3:
            break
    assert eng.blocks_in_use() > 0
    stream.close()
    _wait_idle(server)
    # Not streamed: the client gives up after 0.3 s; the server aborts the request.
    with pytest.raises(httpx.TimeoutException):
        httpx.post(server.url + "/v1/completions", timeout=0.3,
                   json={"model": MODEL, "prompt": PROMPT, "max_tokens": 400, "ignore_eos": True})
    _wait_idle(server)
    metrics = httpx.get(server.url + "/metrics").text
    assert re.search(r'lab_request_finished_total\{finish_reason="abort"\} [1-9]', metrics)
    assert re.search(r"^lab_kv_blocks_in_use 0\.0$", metrics, re.M)


# ---------------------------------------------------------------------------- errors
BAD = [
    ({"prompt": "x"}, "model"),
    ({"model": "gpt-4", "prompt": "x"}, "does not exist"),
    ({"model": MODEL, "prompt": "x", "max_tokens": 600}, "maximum context length is 512 tokens. However, you "
                                                         "requested 602 tokens (2 in the prompt, 600"),
    ({"model": MODEL, "prompt": "x", "temperature": 3}, "'temperature' must be in [0.0, 2.0], got 3"),
    ({"model": MODEL, "prompt": "x", "top_p": 0}, "'top_p'"),
    ({"model": MODEL, "prompt": "x", "n": 0}, "'n'"),
    ({"model": MODEL, "prompt": "x", "max_tokens": 0}, "'max_tokens' must be >= 1"),
    ({"model": MODEL, "prompt": "x", "top_k": 0}, "'top_k'"),
    ({"model": MODEL, "prompt": "x", "logprobs": 50}, "'logprobs'"),
    ({"model": MODEL, "prompt": "x", "temperature": "hot"}, "'temperature' must be a number"),
    ({"model": MODEL, "prompt": ""}, "'prompt'"),
    ({"model": MODEL, "prompt": [1, 2, 9999999]}, "token ids must be in [0, 8192)"),
    ({"model": MODEL, "prompt": "x", "stop": ""}, "'stop'"),
    ({"model": MODEL, "prompt": "x", "presence_penalty": 0.5}, "not supported"),
]


@pytest.mark.parametrize("body,needle", BAD)
def test_bad_completion_requests(server, body, needle):
    r = httpx.post(server.url + "/v1/completions", json=body)
    _assert_error(r, 400, needle)


@pytest.mark.parametrize("body,needle", [
    ({"model": MODEL, "messages": []}, "'messages' must be a non-empty array"),
    ({"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}, "role"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 9999}, "maximum context length"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, "'logprobs': true"),
])
def test_bad_chat_requests(server, body, needle):
    _assert_error(httpx.post(server.url + "/v1/chat/completions", json=body), 400, needle)


def test_malformed_json_and_unknown_route(server, client):
    r = httpx.post(server.url + "/v1/completions", content=b'{"model": "lab-small", "prompt": ',
                   headers={"Content-Type": "application/json"})
    _assert_error(r, 400, "malformed JSON")
    _assert_error(httpx.post(server.url + "/v1/completions", json=[1, 2]), 400, "JSON object")
    _assert_error(httpx.get(server.url + "/v1/nothing"), 404, "Not Found")
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=5000)


def _assert_error(r, status, needle):
    assert r.status_code == status, (r.status_code, r.text)
    err = r.json()["error"]
    assert needle in err["message"], err
    assert err["type"] and "Traceback" not in r.text


def test_engine_error_fails_only_its_request(server, client, monkeypatch):
    """A request whose sampling raises gets a 500 body (and an error event when streamed); a request
    running beside it and the ones after it are served."""
    import scheduler.runner as runner

    real = runner.sample

    def faulty(logits, temperature=0.0, top_k=None, top_p=None, generator=None):
        if generator is not None and generator.initial_seed() == 666:
            raise RuntimeError("planted fault")
        return real(logits, temperature, top_k, top_p, generator)

    monkeypatch.setattr(runner, "sample", faulty)
    ok: list = []
    side = threading.Thread(target=lambda: ok.append(client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=30, temperature=0, extra_body={"ignore_eos": True})))
    side.start()
    r = httpx.post(server.url + "/v1/completions", timeout=60,
                   json={"model": MODEL, "prompt": PROMPT, "max_tokens": 8, "temperature": 1.0, "seed": 666})
    _assert_error(r, 500, "planted fault")
    with pytest.raises(openai.APIError, match="planted fault"):
        for _ in client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, temperature=1.0, seed=666,
                                           stream=True):
            pass
    side.join()
    assert ok and ok[0].usage.completion_tokens == 30
    r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, temperature=1.0, seed=665)
    assert r.usage.completion_tokens == 4
    _wait_idle(server)


# ---------------------------------------------------------------------------- the full queue, the key
def test_full_queue_429_and_api_key():
    """max_num_seqs 1, max_queue 1: one runs, one waits, the third gets 429 with Retry-After. With an
    API key, a request without it is a 401."""
    app = make_app(MODEL, device="cpu", max_num_seqs=1, max_queue=1, api_key="s3cret")
    with ServerThread(app) as s:
        _assert_error(httpx.get(s.url + "/v1/models"), 401, "API key")
        _assert_error(httpx.get(s.url + "/v1/models", headers={"Authorization": "Bearer wrong"}), 401, "API key")
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="s3cret", max_retries=0, timeout=60)
        eng = app.state.engine
        streams = []
        for _ in range(2):
            streams.append(c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=400, stream=True,
                                                extra_body={"ignore_eos": True}))
        deadline = time.monotonic() + 20
        while len(eng.engine.scheduler.running) + eng.num_waiting() < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        with pytest.raises(openai.RateLimitError) as e:
            c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4)
        assert int(e.value.response.headers["retry-after"]) >= 1
        assert "queue is full" in e.value.message
        for st in streams:
            st.close()
        deadline = time.monotonic() + 20
        # the aborted waiter may still sit in the inbox (counted by num_waiting) after the scheduler is empty
        while ((eng.engine.scheduler.requests or eng.engine.blocks_in_use() or eng.num_waiting())
               and time.monotonic() < deadline):
            time.sleep(0.05)
        assert eng.engine.blocks_in_use() == 0 and not eng.engine.scheduler.requests and eng.num_waiting() == 0
        assert c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3).usage.completion_tokens >= 1
        assert "lab_requests_rejected_total 1.0" in httpx.get(s.url + "/metrics",
                                                              headers={"Authorization": "Bearer s3cret"}).text


def test_exposed_host_needs_a_key(capsys):
    from absl import flags

    flags.FLAGS(["openai_server", "--host=0.0.0.0"])
    try:
        assert openai_server._main(["openai_server"]) == 2
    finally:
        flags.FLAGS.unparse_flags()
    assert "--api_key" in capsys.readouterr().err
    for argv, needle in ((["--checkpoint=no/such/dir"], "error: --checkpoint: checkpoint directory not found"),
                         (["--max_queue=0"], "error: --max_queue must be >= 1")):
        flags.FLAGS(["openai_server", *argv])
        try:
            assert openai_server._main(["openai_server"]) == 2
        finally:
            flags.FLAGS.unparse_flags()
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err, err
    assert openai_server.is_loopback("127.0.0.1") and openai_server.is_loopback("::1")
    assert not openai_server.is_loopback("0.0.0.0")


# ---------------------------------------------------------------------------- chat templates
def test_llama3_template():
    from model.tokenizer import load_tokenizer

    tok = load_tokenizer(Path(__file__).absolute().parents[2] / "third_party/tokenizers/llama3/tokenizer.model")
    t = load_chat_template(tok, None)
    assert t.name == "llama3"
    sp = tok.special_tokens
    ids = t.render([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi <|eot_id|>"}])
    header = [sp["<|start_header_id|>"]] + tok.encode("user", bos=False) + [sp["<|end_header_id|>"]]
    assert ids[0] == sp["<|begin_of_text|>"] and ids.count(sp["<|begin_of_text|>"]) == 1
    assert ids.count(sp["<|eot_id|>"]) == 3  # two turns' ends + the user's text, written as a special
    assert any(ids[i:i + len(header)] == header for i in range(len(ids)))
    assert tok.decode(ids[-3:]).endswith("assistant\n\n") or tok.decode(ids[-2:]) == "\n\n"
    assert t.stop_token_ids == (sp["<|eot_id|>"],)


def test_jinja_template_from_tokenizer_config(tmp_path):
    """tokenizer_config.json's chat_template renders (specials -> ids); the sandbox refuses Python internals."""
    import shutil

    from model.loader import checkpoint_dir

    src = checkpoint_dir(MODEL)
    shutil.copy(f"{src}/tokenizer.json", tmp_path / "tokenizer.json")
    cfg = json.loads(open(f"{src}/tokenizer_config.json").read())
    cfg["chat_template"] = ("{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{{ eos_token }}"
                            "{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok = _tokenizer()
    t = load_chat_template(tok, str(tmp_path))
    assert t.name == "tokenizer_config.json"
    ids = t.render([{"role": "user", "content": "hello"}])
    assert ids[0] == tok.bos_id and ids.count(tok.eos_id) == 1
    assert tok.decode(ids) == "[user] hello[assistant]"
    evil = ChatTemplate("tokenizer_config.json", tok, "{{ ''.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(ChatTemplateError):
        evil.render([{"role": "user", "content": "x"}])
